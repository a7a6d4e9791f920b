"""The printed sheet of control codes: one Code 128 barcode per action, labelled in Chinese and English.

    write_sheet(Path("controls.pdf"))

Code 128 because every cheap 1D scanner reads it, and it carries the
``CB:`` prefix and letters that EAN cannot. The bars are reportlab's own
(a maintained implementation of the symbology, not drawn by hand); the
Chinese labels use the PDF's standard Song face (STSong-Light), which every
PDF viewer supplies, so the sheet needs no font file.
"""

from __future__ import annotations

from pathlib import Path

from agent.controls import SHEET

from .errors import CentralError

COLUMNS = 2  # a code of 16 characters with its quiet zones is 75 mm wide
BAR_WIDTH = 0.33  # mm per narrow bar: a common scanner reads it easily at arm's length
BAR_HEIGHT = 12  # mm


# A font with Chinese that Debian packages (fonts-wqy-microhei): embedded when it is there, so the
# labels look the same in every viewer and on every printer.
WQY = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")


def write_sheet(path: Path, *, font: Path | None = None) -> int:
    """Write the sheet to ``path`` (a .pdf); the number of pages. ``font``: a TrueType font with
    Chinese (.ttf, or .ttc: its first face) embedded for the labels, for a sheet that looks the same
    in every viewer; without one, the labels use the standard Song face that viewers supply."""
    from reportlab.graphics.barcode import code128
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont
    from reportlab.pdfgen import canvas

    if path.suffix.lower() != ".pdf":
        raise CentralError(f"{path}: the control sheet is a .pdf")
    label = "STSong-Light"
    font = font if font is not None else (WQY if WQY.exists() else None)
    if font is None:
        pdfmetrics.registerFont(UnicodeCIDFont(label))
    else:
        from reportlab.pdfbase.ttfonts import TTFError, TTFont

        # Registered under a name of its own: reportlab keeps the first font registered under a name for
        # the rest of the process, so one fixed name would give a later sheet an earlier sheet's font.
        label = f"counterbox-label:{font.resolve()}"
        try:
            pdfmetrics.registerFont(TTFont(label, str(font)))
        except (TTFError, OSError) as error:
            raise CentralError(f"font {font}: {error}") from None
    width, height = A4
    margin, cell_w, cell_h = 12 * mm, (A4[0] - 24 * mm) / COLUMNS, 32 * mm
    rows = int((height - 2 * margin - 14 * mm) // cell_h)
    sheet = canvas.Canvas(str(path), pagesize=A4)
    sheet.setTitle("counterbox control codes")
    pages = 0
    for start in range(0, len(SHEET), rows * COLUMNS):
        pages += 1
        sheet.setFont(label, 14)
        sheet.drawString(margin, height - margin - 6 * mm, "counterbox 控制码 / control codes")
        for index, (code, chinese, english) in enumerate(SHEET[start:start + rows * COLUMNS]):
            x = margin + (index % COLUMNS) * cell_w
            y = height - margin - 14 * mm - (index // COLUMNS + 1) * cell_h
            barcode = code128.Code128(code, barWidth=BAR_WIDTH * mm, barHeight=BAR_HEIGHT * mm, humanReadable=True,
                                      quiet=True)
            barcode.drawOn(sheet, x + (cell_w - barcode.width) / 2, y + 18 * mm)  # its text just below the bars
            sheet.setFont(label, 11)
            sheet.drawCentredString(x + cell_w / 2, y + 9 * mm, chinese)
            sheet.setFont("Helvetica", 8)
            sheet.drawCentredString(x + cell_w / 2, y + 4 * mm, english)
        sheet.showPage()
    try:
        sheet.save()
    except OSError as error:
        raise CentralError(f"{path}: {error.strerror}") from None
    return pages
