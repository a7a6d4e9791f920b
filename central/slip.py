"""The printed activation slip: the code as a QR code the counter's scanner reads, and what a person reads.

    write_slip(Path("slip.png"), token, shop, code)     # or slip.pdf

The QR code holds the code's text exactly (a compact JWS: letters, digits and
``-_.``), which a 2D scanner in keyboard mode types into the box. Error
correction level M, so a slip creased in a pocket still reads. The text
beside it says whose box it activates and until when; the code id lets
operations find the code again (`counterbox-ops activation issue` printed it).
The default font covers Latin text; a shop name in Chinese needs a font that
has it (``--font``, e.g. Noto Sans CJK).
"""

from __future__ import annotations

from pathlib import Path

from provisioning.activation import ActivationCode
from provisioning.protocol import rfc3339

from .errors import CentralError
from .store import Shop

SCALE = 6  # pixels per QR module: about 0.5 mm at 300 dpi, well within a scanner's reach
# Fonts with Chinese that Debian installs (fonts-noto-cjk, fonts-wqy-microhei): named when a slip needs one.
CJK_FONTS = (Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
             Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"))
DPI = 300


def write_slip(path: Path, token: str, shop: Shop, code: ActivationCode, *, font: Path | None = None) -> None:
    """Render the slip as PNG or PDF, by ``path``'s suffix."""
    import segno
    from PIL import Image, ImageDraw, ImageFont

    if path.suffix.lower() not in (".png", ".pdf"):
        raise CentralError(f"{path}: a slip is a .png or a .pdf")
    # Never a Micro QR (a short text could be one), which many scanners do not read; segno's border is
    # the standard's quiet zone of four modules.
    qr = segno.make_qr(token, error="m")
    rows = list(qr.matrix_iter(scale=SCALE))
    size = len(rows)
    try:
        face = ImageFont.truetype(str(font), 28) if font else ImageFont.load_default(size=28)
        small = ImageFont.truetype(str(font), 20) if font else ImageFont.load_default(size=20)
    except OSError as error:
        raise CentralError(f"font {font}: {error}") from None
    lines = [
        (face, "counterbox activation"),
        (face, shop.name),
        (small, f"licence {shop.licence}   region {shop.region or '-'}"),
        (small, "monitoring point" if shop.monitoring else "retail shop"),
        (small, f"valid until {rfc3339(code.expires_at)[:16].replace('T', ' ')} UTC"),
        (small, f"for device {code.device}" if code.device else "for any new box, once"),
        (small, f"code {code.code_id}"),
        (small, "Plug the box in, then scan this code."),
    ]
    missing = sorted({char for typeface, text in lines for char in text if _no_glyph(typeface, char)})
    if missing:
        # Written all the same, the slip printed each of them as an empty box: a shop nobody could read.
        at_hand = next((str(path) for path in CJK_FONTS if path.exists()), None)
        raise CentralError(f"font {font or '(built in)'} has no glyph for {' '.join(missing)}: the slip would print "
                           "empty boxes; give --font a font that has them" + (f", such as {at_hand}" if at_hand else
                                                                              " (for Chinese, Noto Sans CJK)"))
    # Wide enough for the longest line (a long shop name), with a margin as wide as the gap before the text.
    width = size + 40 + max(620, max(round(typeface.getlength(text)) for typeface, text in lines) + 40)
    slip = Image.new("L", (width, max(size, 40 + 44 * len(lines))), 255)
    matrix = Image.new("1", (size, size), 1)
    pixels = matrix.load()
    for y, row in enumerate(rows):
        for x, dark in enumerate(row):
            if dark:
                pixels[x, y] = 0
    slip.paste(matrix)
    draw = ImageDraw.Draw(slip)
    y = 30
    for typeface, text in lines:
        draw.text((size + 40, y), text, font=typeface, fill=0)
        y += 44
    slip.save(path, dpi=(DPI, DPI))  # the format by the suffix; a PDF's page is then the slip's printed size


def _no_glyph(typeface, char: str) -> bool:
    """Whether ``typeface`` draws ``char`` as its missing glyph (the one U+FFFF, a noncharacter, is drawn as)."""
    return not char.isspace() and _drawn(typeface, char) == _drawn(typeface, "\uffff")


def _drawn(typeface, text: str) -> tuple:
    mask = typeface.getmask(text)
    return mask.size, bytes(mask)
