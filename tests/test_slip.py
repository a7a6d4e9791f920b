"""The printed activation slip: a QR code the counter's scanner reads, and the lines a person reads beside it.

The slip is read back here as a scanner and a person would: the QR code by zxing-cpp, and each line of
text by comparing its ink with the expected words set in the slip's own typeface (no OCR needed: the
renderer is deterministic), so a word changed, dropped or drawn over another is seen.
"""

from __future__ import annotations

import json

import pypdfium2
import pytest
import zxingcpp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image, ImageChops, ImageDraw, ImageFont

from central.errors import CentralError
from central.ops import main as ops_main
from central.slip import CJK_FONTS, write_slip
from central.store import CentralStore, Shop
from provisioning import activation
from provisioning.activation import ActivationCode
from provisioning.identity import key_id, load_key

from .harness import run_main

NOW = 1_764_000_000.0  # 2025-11-24 16:00 UTC
WQY = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
MM_PER_INCH = 25.4
LINE_GAP = 5  # blank rows within one line of text; lines are at least 6 apart (a test below holds the slip to it)


def _token(shop: Shop, *, device: str | None = None, hours: float = 72, code_id: str = "c0de-42",
           ) -> tuple[str, ActivationCode]:
    key = Ed25519PrivateKey.generate()
    code = ActivationCode(code_id, shop.licence, shop.region, shop.monitoring, NOW, NOW + hours * 3600, device,
                          key_id(key))
    return activation.encode_code(code, key=key, kid=key_id(key)), code


def _dark(image: Image.Image) -> Image.Image:
    """White where the paper is blank, black ink as white: ``getbbox()`` is then the ink's extent."""
    return image.convert("L").point(lambda v: 255 if v < 128 else 0)


def _ink(image: Image.Image, box=None) -> tuple[int, int, int, int] | None:
    return _dark(image.crop(box) if box else image).getbbox()


class Slip:
    """A slip as printed: its QR code's extent and module, and its lines of text, top to bottom."""

    def __init__(self, image: Image.Image):
        self.image = image.convert("L")
        self.width, self.height = self.image.size
        # Read as the counter's 2D scanner reads it, as a QR code (full or Micro). Read as any symbology, a row
        # of modules now and then also passes for a short Codabar (1 slip in a few hundred, with random keys).
        [self.qr] = zxingcpp.read_barcodes(
            self.image, formats=(zxingcpp.BarcodeFormat.QRCode, zxingcpp.BarcodeFormat.MicroQRCode))
        corners = [self.qr.position.top_left, self.qr.position.top_right, self.qr.position.bottom_right,
                   self.qr.position.bottom_left]
        self.left, self.top = min(p.x for p in corners), min(p.y for p in corners)
        # The finder pattern in the top-left corner is 7 modules wide: its first row of ink gives the module.
        row = [self.image.getpixel((x, self.top)) < 128 for x in range(self.left, self.width)]
        self.module = row.index(False) / 7
        corner = (max(p.x for p in corners) + self.module, max(p.y for p in corners) + self.module)
        _, _, self.right, self.bottom = _ink(self.image, (self.left, self.top, *corner))
        self.right, self.bottom = self.left + self.right, self.top + self.bottom  # past the last module's pixels
        self.lines = self._lines()

    def _lines(self) -> list[tuple[int, int, int, int]]:
        """The ink of each line of text right of the QR code (left, top, right, bottom), top to bottom.

        Bands of ink at most ``LINE_GAP`` blank rows apart are one line: an underscore sits a row or
        two below its letters, and the lines themselves are set further apart than that."""
        text = (self.right, 0, self.width, self.height)
        dark = _dark(self.image.crop(text))
        inked = [y for y in range(dark.height) if dark.crop((0, y, dark.width, y + 1)).getbbox() is not None]
        bands: list[list[int]] = []
        for y in inked:
            if bands and y - bands[-1][1] <= LINE_GAP:
                bands[-1][1] = y + 1
            else:
                bands.append([y, y + 1])
        lines = []
        for top, bottom in bands:
            left, _, right, _ = dark.crop((0, top, dark.width, bottom)).getbbox()
            lines.append((self.right + left, top, self.right + right, bottom))
        return lines

    def reads(self, line: tuple[int, int, int, int], words: str, font: str | None = None) -> bool:
        """Whether ``line``'s ink is ``words`` set in the slip's typeface, at a legible size (16 px and up,
        1.4 mm at 300 dpi)."""
        return self.size(line, words, font) is not None

    def size(self, line: tuple[int, int, int, int], words: str, font: str | None = None) -> int | None:
        """The size in pixels (the typeface's em) at which ``line``'s ink is ``words`` set in the slip's typeface;
        None if it is not those words at any legible size."""
        printed = self.image.crop(line)
        for size in range(16, 48):
            face = ImageFont.truetype(font, size) if font else ImageFont.load_default(size=size)
            page = Image.new("L", (printed.width + 200, printed.height + 100), 255)
            ImageDraw.Draw(page).text((20, 20), words, font=face, fill=0)
            box = _ink(page)
            if box and (box[2] - box[0], box[3] - box[1]) == printed.size:
                if ImageChops.difference(page.crop(box), printed).getbbox() is None:
                    return size
        return None

    def text_height(self, line) -> int:
        return line[3] - line[1]


def _slip(tmp_path, shop: Shop, *, name="slip.png", font=None, **code) -> tuple[Slip, str, ActivationCode]:
    token, issued = _token(shop, **code)
    write_slip(tmp_path / name, token, shop, issued, font=font)
    return Slip(Image.open(tmp_path / name)), token, issued


MENGZI = Shop("530102100123", "Mengzi No. 3", "honghe", monitoring=True)
JIANSHUI = Shop("530100000009", "Jianshui No. 2", "", monitoring=False)


def test_the_slips_qr_code_reads_as_the_code_exactly_with_error_correction_for_a_creased_slip(tmp_path):
    slip, token, _ = _slip(tmp_path, MENGZI)
    assert slip.qr.format.name == "QRCode" and slip.qr.text == token
    assert slip.qr.ec_level in ("M", "Q", "H")  # at least M: 15% of the modules may be lost


def test_the_qr_code_keeps_a_quiet_zone_of_four_modules_from_the_edges_and_the_text(tmp_path):
    slip, _, _ = _slip(tmp_path, MENGZI)
    assert slip.module >= 1
    assert slip.left >= 4 * slip.module and slip.top >= 4 * slip.module
    assert slip.height - slip.bottom >= 4 * slip.module
    assert min(left for left, _, _, _ in slip.lines) - slip.right >= 4 * slip.module
    # Nothing else is inked in the quiet zone or the QR code's square.
    square = (0, 0, slip.right + 4 * round(slip.module), slip.bottom + 4 * round(slip.module))
    qr_ink = _ink(slip.image, square)
    assert qr_ink == (slip.left, slip.top, slip.right, slip.bottom)


def test_a_png_slip_prints_its_modules_at_a_size_a_scanner_reads(tmp_path):
    slip, _, _ = _slip(tmp_path, MENGZI)
    dpi = Image.open(tmp_path / "slip.png").info["dpi"]
    assert round(dpi[0]) == round(dpi[1]) == 300
    assert 0.4 <= slip.module / dpi[0] * MM_PER_INCH <= 0.6


def test_a_pdf_slip_is_the_same_slip_at_the_same_printed_size(tmp_path):
    token, issued = _token(MENGZI)
    write_slip(tmp_path / "slip.png", token, MENGZI, issued)
    write_slip(tmp_path / "slip.pdf", token, MENGZI, issued)
    png = Slip(Image.open(tmp_path / "slip.png"))
    pdf = pypdfium2.PdfDocument(tmp_path / "slip.pdf")
    try:
        assert len(pdf) == 1
        page = pdf[0]
        width_mm, height_mm = (points / 72 * MM_PER_INCH for points in page.get_size())
        rendered = Slip(page.render(scale=300 / 72).to_pil())
    finally:
        pdf.close()
    assert rendered.qr.text == token
    assert width_mm == pytest.approx(png.width / 300 * MM_PER_INCH, abs=0.2)
    assert height_mm == pytest.approx(png.height / 300 * MM_PER_INCH, abs=0.2)
    assert 0.4 <= rendered.module / 300 * MM_PER_INCH <= 0.6
    assert len(rendered.lines) == len(png.lines)


@pytest.mark.parametrize("shop, code, lines", [
    (MENGZI, {}, ["counterbox activation", "Mengzi No. 3", "licence 530102100123   region honghe", "monitoring point",
                  "valid until 2025-11-27 16:00 UTC", "for any new box, once", "code c0de-42",
                  "Plug the box in, then scan this code."]),
    (JIANSHUI, {"device": "cb-remote-1", "hours": 0.5 + 59 / 3600, "code_id": "Qx_9-c0de_42"},
     ["counterbox activation", "Jianshui No. 2", "licence 530100000009   region -", "retail shop",
      "valid until 2025-11-24 16:30 UTC", "for device cb-remote-1", "code Qx_9-c0de_42",
      "Plug the box in, then scan this code."]),
])
def test_the_slip_says_whose_box_it_activates_until_when_and_which_code_it_is(tmp_path, shop, code, lines):
    slip, _, _ = _slip(tmp_path, shop, **code)
    assert len(slip.lines) == len(lines)
    unread = [words for line, words in zip(slip.lines, lines) if not slip.reads(line, words)]
    assert unread == []


def test_the_title_and_the_shops_name_stand_out_from_the_details(tmp_path):
    slip, _, _ = _slip(tmp_path, MENGZI)
    title, name, *details = slip.lines
    capitals = [slip.text_height(line) for line in (title, name)]
    assert min(capitals) > max(slip.text_height(line) for line in details if line)


@pytest.mark.parametrize("shop", [MENGZI, Shop("530102100124", "Honghe Hani and Yi Prefecture Tobacco and Sundries "
                                                 "No. 12", "honghe", monitoring=False)])
def test_every_line_is_inside_the_slip_with_a_margin_and_none_touches_another(tmp_path, shop):
    """Even a shop name longer than the slip's usual width: the slip is as wide as its longest line needs."""
    slip, _, _ = _slip(tmp_path, shop)
    margin = 2 / MM_PER_INCH * 300  # 2 mm at 300 dpi: what a printer may not print at the paper's edge
    for left, top, right, bottom in slip.lines:
        assert top >= margin and bottom <= slip.height - margin and right <= slip.width - margin
    for (_, _, _, above), (_, below, _, _) in zip(slip.lines, slip.lines[1:]):
        assert below - above >= 6  # half a millimetre of paper between lines at least


def test_a_shop_name_in_chinese_is_printed_with_every_line_in_the_font_given(tmp_path):
    shop = Shop("530102100123", "蒙自三号店", "honghe", monitoring=True)
    slip, token, _ = _slip(tmp_path, shop, font=WQY)
    assert slip.qr.text == token
    lines = ["counterbox activation", "蒙自三号店", "licence 530102100123   region honghe", "monitoring point",
             "valid until 2025-11-27 16:00 UTC", "for any new box, once", "code c0de-42",
             "Plug the box in, then scan this code."]
    assert len(slip.lines) == len(lines)
    assert [words for line, words in zip(slip.lines, lines) if not slip.reads(line, words, WQY)] == []


def test_a_shop_name_the_font_has_no_glyph_for_is_refused_rather_than_printed_as_empty_boxes(tmp_path):
    """Without --font (as the docs' example ran it), a Chinese shop name was written as five empty boxes, exit 0."""
    shop = Shop("530102100123", "蒙自三号店", "honghe", monitoring=True)
    token, issued = _token(shop)
    at_hand = next(str(path) for path in CJK_FONTS if path.exists())  # the test's own font among them
    with pytest.raises(CentralError) as refused:
        write_slip(tmp_path / "slip.png", token, shop, issued)
    assert str(refused.value) == (f"font (built in) has no glyph for {' '.join(sorted('蒙自三号店'))}: the slip would "
                                  f"print empty boxes; give --font a font that has them, such as {at_hand}")
    assert not (tmp_path / "slip.png").exists()


def test_a_font_given_changes_the_typeface_not_the_size_of_any_line(tmp_path):
    """A slip for a shop with a Chinese name (``--font``) is laid out as every other slip: its title and name are set
    at the size the default typeface sets them, and so are the details, so slips for every shop look alike and the
    title and name stand out from the details by as much on each."""
    latin, _, _ = _slip(tmp_path, MENGZI, name="latin.png")
    chinese, _, _ = _slip(tmp_path, Shop("530102100123", "蒙自三号店", "honghe", monitoring=True), name="chinese.png",
                          font=WQY)
    words = ["counterbox activation", None, "licence 530102100123   region honghe", "monitoring point",
             "valid until 2025-11-27 16:00 UTC", "for any new box, once", "code c0de-42",
             "Plug the box in, then scan this code."]
    assert len(latin.lines) == len(chinese.lines) == len(words)
    sizes = [(latin.size(a, text or "Mengzi No. 3"), chinese.size(b, text or "蒙自三号店", WQY))
             for a, b, text in zip(latin.lines, chinese.lines, words)]
    assert all(default is not None and default == given for default, given in sizes), sizes
    assert sizes[0] == sizes[1]  # the title and the name at one size, on either slip


def test_a_slip_is_a_png_or_a_pdf_and_its_font_must_be_one(tmp_path):
    token, issued = _token(MENGZI)
    with pytest.raises(CentralError) as refused:
        write_slip(tmp_path / "slip.gif", token, MENGZI, issued)
    assert str(refused.value) == f"{tmp_path / 'slip.gif'}: a slip is a .png or a .pdf"
    (tmp_path / "font.ttf").write_text("not a font")
    with pytest.raises(CentralError, match=f"^font {tmp_path / 'font.ttf'}: "):
        write_slip(tmp_path / "slip.png", token, MENGZI, issued, font=tmp_path / "font.ttf")
    assert not (tmp_path / "slip.png").exists()


def test_a_suffix_in_capitals_is_the_same_kind_of_slip(tmp_path):
    token, issued = _token(MENGZI)
    write_slip(tmp_path / "SLIP.PNG", token, MENGZI, issued)
    write_slip(tmp_path / "SLIP.PDF", token, MENGZI, issued)
    assert Image.open(tmp_path / "SLIP.PNG").format == "PNG"
    assert (tmp_path / "SLIP.PDF").read_bytes().startswith(b"%PDF-")


def test_a_short_text_is_still_a_full_qr_code_never_a_micro_one_many_scanners_cannot_read(tmp_path):
    """A code is a long signed text; the slip holds whatever it is given as a full QR code all the same."""
    _, issued = _token(MENGZI)
    write_slip(tmp_path / "slip.png", "CB1", MENGZI, issued)
    slip = Slip(Image.open(tmp_path / "slip.png"))
    assert (slip.qr.format.name, slip.qr.text) == ("QRCode", "CB1")
    assert slip.left >= 4 * slip.module and slip.top >= 4 * slip.module


def test_a_qr_code_shorter_than_the_text_beside_it_leaves_every_line_whole_and_inside_the_margin(tmp_path):
    """The slip is as tall as the taller of its QR code and its text: beside a small QR code (a short text) the
    eight lines are all there, in full, and the last one is as far from the paper's edge as a printer needs."""
    _, issued = _token(MENGZI)
    write_slip(tmp_path / "slip.png", "CB1", MENGZI, issued)
    slip = Slip(Image.open(tmp_path / "slip.png"))
    assert slip.lines and slip.bottom < slip.lines[-1][3]  # the text, not the QR code, is the taller here
    lines = ["counterbox activation", "Mengzi No. 3", "licence 530102100123   region honghe", "monitoring point",
             "valid until 2025-11-27 16:00 UTC", "for any new box, once", "code c0de-42",
             "Plug the box in, then scan this code."]
    assert len(slip.lines) == len(lines)
    assert [words for line, words in zip(slip.lines, lines) if not slip.reads(line, words)] == []
    margin = 2 / MM_PER_INCH * 300  # 2 mm at 300 dpi, as for a slip with a full-length code
    for left, top, right, bottom in slip.lines:
        assert top >= margin and bottom <= slip.height - margin and right <= slip.width - margin


def test_issuing_a_code_with_a_slip_prints_it_keeps_the_code_and_names_the_slip(tmp_path):
    """`counterbox-ops activation issue --slip`, in this process: the slip holds the code central kept."""
    db, key = tmp_path / "central.db", tmp_path / "ops.key"
    assert run_main(ops_main, ["keygen", "--ops-key", str(key)]).returncode == 0
    assert run_main(ops_main, ["shop", "add", "--central-db", str(db), "--licence", "530102100123", "--name",
                               "Mengzi No. 3", "--region", "honghe", "--monitoring"]).returncode == 0
    result = run_main(ops_main, ["activation", "issue", "--central-db", str(db), "--ops-key", str(key),
                                 "--shop", "530102100123", "--valid-hours", "2", "--slip", str(tmp_path / "slip.png")])
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["shop"], printed["device"], printed["slip"], printed["pushed"]) == (
        "530102100123", None, str(tmp_path / "slip.png"), False)
    slip = Slip(Image.open(tmp_path / "slip.png"))
    ops_key = load_key(key)
    code = activation.decode_code(slip.qr.text, trusted={key_id(ops_key): ops_key.public_key()})
    assert (code.code_id, code.shop, code.region, code.monitoring, code.device) == (
        printed["code"], "530102100123", "honghe", True, None)
    assert code.expires_at - code.issued_at == 2 * 3600
    store = CentralStore(db)
    try:
        kept = store.conn.execute("SELECT code_id, shop, token, device FROM activation_codes").fetchall()
    finally:
        store.close()
    assert kept == [(printed["code"], "530102100123", slip.qr.text, None)]
    assert len(slip.lines) == 8
    assert slip.reads(slip.lines[6], f"code {printed['code']}")
