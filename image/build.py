"""The box's disk image, built from Debian's packages with mmdebstrap, without loop devices or mounts.

One disk, GPT, three partitions:

    esp               FAT   systemd-boot, the kernel and its initrd (what a box's UEFI firmware starts)
    counterbox-root   ext4  Debian 12, the agent in /opt/counterbox/.venv, the units enabled; read-only at run time
    counterbox-data   ext4  mounted on /var/lib: the journal, the device and data keys, systemd's credential secret

Each filesystem is made from a directory (``mkfs.ext4 -d``, ``mcopy``) and written into the disk at
its offset. A build is cached under ``~/.cache/counterbox-image/`` by a hash of everything that goes
into it, so an unchanged tree is built once:

    image = build()                  # Image(disk, kernel, initrd, cmdline, ...)
    configure(image.disk, {"/etc/counterbox/agent.toml": (text, 0o640, "counterbox")})
    again = rebuild(path)            # the same tree built once more: compare.differences(image, again)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("COUNTERBOX_IMAGE_CACHE", Path.home() / ".cache" / "counterbox-image"))
SUITE = "bookworm"
PACKAGES = ["systemd", "systemd-sysv", "udev", "systemd-resolved", "systemd-timesyncd", "kmod", "e2fsprogs",
            "linux-image-amd64", "zstd", "systemd-boot-efi",
            "python3", "libusb-1.0-0", "libxkbcommon0", "xkb-data"]
# Building the agent's virtualenv needs these; customize.sh purges them again.
BUILD_ONLY = (HERE / "build-only-packages").read_text().split()
# Left out of the root: documentation, and kernel modules for hardware a counter box has not (sound,
# graphics, cameras and TV tuners, InfiniBand): a third of the kernel's modules.
EXCLUDED = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*",
            "/lib/modules/*/kernel/sound/*", "/lib/modules/*/kernel/drivers/gpu/*",
            "/lib/modules/*/kernel/drivers/media/*", "/lib/modules/*/kernel/drivers/infiniband/*"]
KEPT = ["/usr/share/doc/*/copyright"]
# The sources of the agent's wheel and of the image: any change to one makes a new image.
INPUTS = ["image", "systemd", "agent", "drivers", "storage", "provisioning", "central", "pyproject.toml",
          "README.md", "docs/configuration.md"]

MiB = 1 << 20
SECTOR = 512
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # Linux root (x86-64), Discoverable Partitions
DATA_TYPE = "4D21B016-B534-45C2-A9FB-5C16E091FD2D"  # Linux /var
DISK_UUID = "6c6b3b1e-0a4e-4c8b-9f61-0c2b5e1d7a01"
ESP_UUID = "6c6b3b1e-0a4e-4c8b-9f61-0c2b5e1d7a02"
ROOT_UUID = "6c6b3b1e-0a4e-4c8b-9f61-0c2b5e1d7a03"
DATA_UUID = "6c6b3b1e-0a4e-4c8b-9f61-0c2b5e1d7a04"
DATA_SIZE = 256 * MiB
CMDLINE = f"root=PARTUUID={ROOT_UUID} ro rootwait console=tty1 console=ttyS0,115200 quiet"


class ImageError(Exception):
    """The image cannot be built or configured; the message says which step and why."""


@dataclass(frozen=True)
class Image:
    directory: Path
    inputs: str  # hash of what went into it

    @property
    def disk(self) -> Path:
        return self.directory / "counterbox.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def facts(self) -> dict:
        """What the build measured and decided: seconds it took, sizes, the cmdline, the agent's group id."""
        return json.loads((self.directory / "build.json").read_text())

    @property
    def cmdline(self) -> str:
        return self.facts["cmdline"]


def inputs_hash() -> str:
    # The epoch is an input too: every timestamp in the image is at most it.
    digest = hashlib.sha256(f"{SUITE} {PACKAGES} {EXCLUDED} {_source_date_epoch()}".encode())
    for name in INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build(*, cache: Path = CACHE, log=print) -> Image:
    """The image for this tree: from the cache when its inputs are unchanged, else built (a minute or two)."""
    key = inputs_hash()
    image = Image(cache / key, key)
    if (image.directory / "build.json").exists():
        return image
    work = _build(cache, cache, key, log)
    for old in cache.glob("*/build.json"):  # one image kept: each is a few hundred MiB
        if old.parent != work:
            shutil.rmtree(old.parent, ignore_errors=True)
    work.rename(image.directory)
    log(f"image built in {image.facts['seconds']} s: {image.disk} ({image.facts['disk_bytes'] / MiB:.0f} MiB, "
        f"root {image.facts['root_used_bytes'] / MiB:.0f} MiB used)")
    return image


def rebuild(directory: Path, *, cache: Path = CACHE, log=print) -> Image:
    """This tree built once more into ``directory`` (which must not exist yet), whatever the cache holds:
    a work directory of its own, only Debian's packages and pip's downloads shared with ``cache``.
    What a reproducibility check compares with build()'s image."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    key = inputs_hash()
    _build(directory.parent, cache, key, log).rename(directory)
    return Image(directory, key)


def two_builds(directory: Path, *, cache: Path = CACHE, log=print) -> tuple[Image, Image]:
    """Two builds of this tree from the same Debian packages, for a reproducibility check: build()'s
    image (the cached one when it can) and this tree built again into ``directory``/again. When the
    mirror has served other packages since the cached image was built, the first is built again too,
    into ``directory``/first: two builds across a point release differ in the packages themselves."""
    first = build(cache=cache, log=log)
    second = rebuild(directory / "again", cache=cache, log=log)
    if first.facts.get("packages") != second.facts["packages"]:
        log("image: the mirror's packages changed since the cached image was built; building it again")
        first = rebuild(directory / "first", cache=cache, log=log)
    return first, second


def _build(where: Path, cache: Path, key: str, log) -> Path:
    """The image built in a new directory under ``where``, with the downloads kept in ``cache``."""
    for tool in ("mmdebstrap", "mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "debugfs"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} is missing: ./bootstrap installs the host packages the image build needs")
    if os.geteuid() != 0:
        raise ImageError("building the image needs root (mmdebstrap makes the root in a chroot)")
    where.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=where))
    try:
        started = time.monotonic()
        stage = _stage(work / "stage", log)
        tree = work / "root"
        _mmdebstrap(tree, stage, cache, log)
        rooted = time.monotonic()
        facts = _assemble(tree, work, log)
        facts.update(packages=_packages(tree), seconds=round(time.monotonic() - started, 1), root_seconds=round(rooted - started, 1),
                     inputs=key, built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        shutil.rmtree(tree)
        shutil.rmtree(stage)
        (work / "build.json").write_text(json.dumps(facts, indent=1) + "\n")
        return work
    except BaseException:
        subprocess.run(["umount", "-R", str(work / "root")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
        raise


def _packages(tree: Path) -> str:
    """A digest of the Debian packages in the root, name and version: two builds of one tree can be
    byte for byte the same only when the mirror served them the same packages."""
    listed = _run(["dpkg-query", f"--admindir={tree / 'var/lib/dpkg'}", "-W", "-f", "${binary:Package} ${Version}\n"],
                  "listing the root's packages").stdout
    return hashlib.sha256("".join(sorted(listed.splitlines(keepends=True))).encode()).hexdigest()[:16]


def _run(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise ImageError(f"{what} failed ({command[0]} exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return done


def _stage(stage: Path, log) -> Path:
    """What customize.sh puts into the root: the agent's wheel, the pins, the units, the overlay."""
    log("image: building the agent's wheel")
    epoch = int(_source_date_epoch())
    source = stage / "source"
    source.mkdir(parents=True)
    for name in ("agent", "drivers", "storage", "provisioning", "central"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _date_tree(source, epoch)  # the wheel's entries carry their files' times
    pip = [str(Path(os.sys.executable).parent / "pip")] if (Path(os.sys.executable).parent / "pip").exists() else [os.sys.executable, "-m", "pip"]
    _run(pip + ["wheel", "-q", "--no-deps", "-w", str(stage / "wheel"), str(source)], "building the agent's wheel")
    shutil.rmtree(source)
    shutil.copytree(HERE / "rootfs", stage / "rootfs")
    shutil.copytree(ROOT / "systemd", stage / "systemd")
    for name in ("requirements.txt", "build-only-packages"):
        shutil.copy(HERE / name, stage / name)
    shutil.copy(ROOT / "README.md", stage / "README.md")
    shutil.copy(ROOT / "docs" / "configuration.md", stage / "configuration.md")
    _date_tree(stage, epoch)
    return stage


def _date_tree(tree: Path, epoch: int) -> None:
    """Every file and directory in ``tree`` dated ``epoch``. The stage's copies keep the checkout's own
    times, which say when the tree was checked out (or edited), not what it holds: a file older than the
    epoch would keep its time through the clamp into the root, and into the initrd (mkinitramfs clamps
    only what is newer), so two checkouts of one commit would make two images."""
    for path in [tree, *tree.rglob("*")]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


def _mirror() -> list[str]:
    """This machine's Debian sources (deb822 files), else Debian's own mirror."""
    files = sorted(str(p) for p in Path("/etc/apt/sources.list.d").glob("*.sources"))
    return files or ["http://deb.debian.org/debian"]


def _mmdebstrap(tree: Path, stage: Path, cache: Path, log) -> None:
    debs, pip_cache = cache / "debs", cache / "pip"
    debs.mkdir(exist_ok=True)
    pip_cache.mkdir(exist_ok=True)
    log(f"image: mmdebstrap {SUITE} ({len(PACKAGES)} packages and their dependencies)")
    overlay = stage / "rootfs"
    command = [
        "mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES + BUILD_ONLY),
        *[f"--dpkgopt=path-exclude={p}" for p in EXCLUDED], *[f"--dpkgopt=path-include={p}" for p in KEPT],
        # The initrd's settings before the kernel's package makes the initrd.
        f'--essential-hook=cp -a "{overlay}/etc/initramfs-tools" "$1/etc/"',
        "--skip=essential/unlink", '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        f'--customize-hook=sh "{HERE / "customize.sh"}" "$1" "{stage}" "{pip_cache}"',
        SUITE, str(tree), *_mirror(),
    ]
    env = {**os.environ, "SOURCE_DATE_EPOCH": _source_date_epoch()}
    _run(command, "mmdebstrap", env=env)


def _source_date_epoch() -> str:
    """The time of the last commit that changed the image's inputs, for a reproducible build (a commit
    elsewhere in the tree changes nothing in the image); a fixed time where the tree is no git checkout
    (or git is not installed: a tree unpacked from an archive)."""
    try:
        done = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%ct", "--", *INPUTS],
                              capture_output=True, text=True)
    except OSError:
        return "1700000000"
    return done.stdout.strip() or "1700000000"


def _kib(path: Path) -> int:
    return int(_run(["du", "-s", "--block-size=1024", str(path)], "measuring the root").stdout.split()[0])


def _assemble(tree: Path, work: Path, log) -> dict:
    """The kernel and initrd out of the root, the three filesystems, and the disk that holds them."""
    boot = tree / "boot"
    kernel = max(boot.glob("vmlinuz-*"))
    initrd = boot / kernel.name.replace("vmlinuz-", "initrd.img-")
    epoch = int(_source_date_epoch())
    for source, name in ((kernel, "vmlinuz"), (initrd, "initrd.img")):
        shutil.copy(source, work / name)
        os.utime(work / name, (epoch, epoch))
    # Empty: each box keeps an id of its own on its data partition, which the initramfs lays over this
    # file (rootfs/etc/initramfs-tools/scripts/local-bottom/counterbox-machine-id).
    (tree / "etc/machine-id").write_text("")
    group = next(line.split(":")[2] for line in (tree / "etc/group").read_text().splitlines() if line.startswith("counterbox:"))
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1"}

    log("image: filesystems")
    used = _kib(tree) * 1024
    root_size = _round_up(int(used * 1.15) + 48 * MiB, MiB)
    paths = _clamp_times(tree, epoch)
    # No ext4 journal on a filesystem that is never written at run time.
    _run(["mkfs.ext4", "-q", "-F", "-d", str(tree), "-L", "counterbox-root", "-U", ROOT_UUID, "-O", "^has_journal",
          "-E", f"root_owner=0:0,hash_seed={ROOT_UUID}", str(work / "root.ext4"), f"{root_size // 1024}k"],
         "making the root filesystem", env=env)
    _set_inode_times(work / "root.ext4", paths, epoch, env)
    _run(["mkfs.ext4", "-q", "-F", "-L", "counterbox-data", "-U", DATA_UUID, "-E", f"hash_seed={DATA_UUID}",
          str(work / "data.ext4"), f"{DATA_SIZE // 1024}k"], "making the data filesystem", env=env)

    esp_size = _round_up(kernel.stat().st_size + initrd.stat().st_size + 8 * MiB, MiB)
    esp = work / "esp.vfat"
    # --invariant: no time of day in the boot sector or the volume label; mtools takes SOURCE_DATE_EPOCH
    # for the directories it makes, and -m the files' own (clamped) times.
    _run(["mkfs.vfat", "--invariant", "-C", "-n", "ESP", "-i", "c0b0c0b0", str(esp), str(esp_size // 1024)],
         "making the ESP", env=env)
    entries = work / "loader"
    (entries / "entries").mkdir(parents=True)
    (entries / "loader.conf").write_text("default counterbox.conf\ntimeout 0\n")
    (entries / "entries" / "counterbox.conf").write_text(
        f"title counterbox\nlinux /vmlinuz\ninitrd /initrd.img\noptions {CMDLINE}\n")
    _clamp_times(entries, epoch)
    _run(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], "laying out the ESP", env=env)
    _run(["mcopy", "-m", "-i", str(esp), str(tree / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"), "::/EFI/BOOT/BOOTX64.EFI"],
         "installing systemd-boot", env=env)
    _run(["mcopy", "-m", "-s", "-i", str(esp), str(entries), str(work / "vmlinuz"), str(work / "initrd.img"), "::/"],
         "copying the kernel to the ESP", env=env)
    shutil.rmtree(entries)

    parts = [(esp, ESP_TYPE, ESP_UUID, "esp"), (work / "root.ext4", ROOT_TYPE, ROOT_UUID, "counterbox-root"),
             (work / "data.ext4", DATA_TYPE, DATA_UUID, "counterbox-data")]
    disk = work / "counterbox.img"
    start, lines = MiB, [f"label: gpt\nlabel-id: {DISK_UUID}\nfirst-lba: 2048"]
    for image, kind, uuid, name in parts:
        size = image.stat().st_size
        lines.append(f"start={start // SECTOR}, size={size // SECTOR}, type={kind}, uuid={uuid}, name={name}")
        start += _round_up(size, MiB)
    with disk.open("wb") as out:
        out.truncate(start + MiB)  # and room for the backup GPT
    _run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(disk)], "partitioning the disk", input="\n".join(lines) + "\n")
    offset = MiB
    for image, *_ in parts:
        _copy_sparse(image, disk, offset)
        offset += _round_up(image.stat().st_size, MiB)
        image.unlink()
    return {"cmdline": CMDLINE, "counterbox_gid": int(group), "disk_bytes": disk.stat().st_size,
            "disk_allocated_bytes": disk.stat().st_blocks * 512, "root_used_bytes": used,
            "root_partition_bytes": root_size, "kernel": kernel.name, "esp_bytes": esp_size}


def _clamp_times(tree: Path, epoch: int) -> list[str]:
    """No modification time in ``tree`` later than ``epoch`` (mmdebstrap leaves the build's own clock on
    what it installs, and mkfs.ext4 -d copies each file's times); its paths, one per inode, for
    _set_inode_times."""
    paths, seen = [], set()

    def clamp(path: str) -> None:
        stat = os.lstat(path)
        mtime = min(stat.st_mtime, epoch)
        os.utime(path, (epoch, mtime), follow_symlinks=False)
        if (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            relative = os.path.relpath(path, tree)
            paths.append("/" if relative == "." else "/" + relative)

    clamp(str(tree))
    for directory, names, files in os.walk(tree):
        for name in names + files:
            clamp(os.path.join(directory, name))
    return paths


def _set_inode_times(filesystem: Path, paths: list[str], epoch: int, env: dict) -> None:
    """Each inode's change and access times set to ``epoch``: mkfs.ext4 -d copies them from the tree,
    where the change time is when the build touched the file (nothing but the filesystem itself can
    set it) and the access time may be when mkfs read it."""
    bad = [p for p in paths if '"' in p or "\n" in p]
    if bad:
        raise ImageError(f"debugfs cannot name {bad[0]!r}: a path in the root with a quote or a newline")
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as script:
        script.write("".join(f'sif "{p}" ctime @{epoch}\nsif "{p}" atime @{epoch}\n' for p in paths))
        script.flush()
        done = _run(["debugfs", "-w", "-f", script.name, str(filesystem)], "setting the root's inode times", env=env)
    errors = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if errors:
        raise ImageError("setting the root's inode times failed:\n" + "\n".join(errors[:10]))


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _copy_sparse(source: Path, disk: Path, offset: int) -> None:
    """Write ``source`` into ``disk`` at ``offset``, skipping blocks of zeros (the disk stays sparse)."""
    zero = bytes(MiB)
    with source.open("rb") as inp, disk.open("r+b") as out:
        position = offset
        while chunk := inp.read(MiB):
            if chunk != zero[:len(chunk)]:
                out.seek(position)
                out.write(chunk)
            position += len(chunk)


def partition(disk: Path, name: str) -> tuple[int, int]:
    """(offset, size) in bytes of the partition called ``name``."""
    table = json.loads(_run(["sfdisk", "-J", str(disk)], "reading the partition table").stdout)["partitiontable"]
    for part in table["partitions"]:
        if part.get("name") == name:
            return part["start"] * SECTOR, part["size"] * SECTOR
    raise ImageError(f"{disk} has no partition {name!r}: not a counterbox image")


def configure(disk: Path, files: dict[str, tuple[str, int, str]]) -> None:
    """Write files into the root filesystem of ``disk``: {path: (text, mode, group)}, owned by root.

    Through debugfs on the partition's offset, so an image is configured for its fleet (the broker,
    central's key, the operations keys in agent.toml) without mounting it.
    """
    offset, _ = partition(disk, "counterbox-root")
    device = f"{disk}?offset={offset}"
    with tempfile.TemporaryDirectory() as scratch:
        commands = []
        for index, (path, (text, mode, group)) in enumerate(sorted(files.items())):
            local = Path(scratch) / str(index)
            local.write_text(text)
            gid = _gid(device, group)
            parent = str(Path(path).parent)
            commands += [f"mkdir {parent}", f"rm {path}", f"write {local} {path}", f"sif {path} uid 0",
                         f"sif {path} gid {gid}", f"sif {path} mode 0{0o100000 | mode:o}"]
        script = Path(scratch) / "commands"
        script.write_text("\n".join(commands) + "\n")
        _run(["debugfs", "-w", "-f", str(script), device], f"writing {', '.join(files)} into {disk}")
    for path in files:  # debugfs reports a failed write only in its output: look for each file
        listed = _run(["debugfs", "-R", f"stat {path}", device], f"checking {path}")
        if "Inode:" not in listed.stdout:
            raise ImageError(f"{path} was not written into {disk}: {listed.stderr.strip()}")


ENTRY = "::/loader/entries/counterbox.conf"


def add_boot_options(disk: Path, options: str) -> str:
    """Append ``options`` to the command line of the boot entry on the ESP of ``disk`` (a copy: tests add
    their control shell this way to a box booted by its UEFI firmware); the new command line."""
    offset, _ = partition(disk, "esp")
    device = f"{disk}@@{offset}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    entry = _run(["mtype", "-i", device, ENTRY], f"reading the boot entry of {disk}", env=env).stdout
    if "\noptions " not in entry:
        raise ImageError(f"the boot entry of {disk} has no options line:\n{entry}")
    lines = [f"{line} {options}" if line.startswith("options ") else line for line in entry.splitlines()]
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / "counterbox.conf"
        local.write_text("\n".join(lines) + "\n")
        _run(["mcopy", "-o", "-i", device, str(local), ENTRY], f"writing the boot entry of {disk}", env=env)
    return next(line for line in lines if line.startswith("options ")).removeprefix("options ")


def _gid(device: str, group: str) -> int:
    if group == "root":
        return 0
    text = _run(["debugfs", "-R", "cat /etc/group", device], "reading /etc/group").stdout
    for line in text.splitlines():
        if line.startswith(group + ":"):
            return int(line.split(":")[2])
    raise ImageError(f"the image has no group {group!r}")
