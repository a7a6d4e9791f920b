"""The printed sheet of control codes, read back as a scanner would: every code on it is the control it says."""

from pathlib import Path

import pypdfium2
import pytest
import zxingcpp

from agent import controls
from central import ops
from central.errors import CentralError
from central.sheet import write_sheet


def test_every_control_is_on_the_sheet_as_a_code_128_that_reads_back(tmp_path):
    path = tmp_path / "controls.pdf"
    assert ops.main(["controls", "sheet", str(path)]) == 0
    read, text = [], ""
    for page in pypdfium2.PdfDocument(str(path)):
        image = page.render(scale=300 / 72).to_pil()  # as printed at 300 dpi
        read += [(r.text, r.format) for r in zxingcpp.read_barcodes(image)]
        text += page.get_textpage().get_text_range()
    assert sorted(code for code, _ in read) == sorted(code for code, _, _ in controls.SHEET)
    assert {fmt for _, fmt in read} == {zxingcpp.BarcodeFormat.Code128}
    for code, chinese, english in controls.SHEET:
        assert controls.control(code) is not None
        assert chinese in text and english in text  # both labels, beside each code
    assert b"/FontFile2" in path.read_bytes()  # a font with Chinese embedded (fonts-wqy-microhei): any viewer shows it


def test_the_sheet_is_a_pdf_and_a_bad_font_is_named(tmp_path):
    with pytest.raises(CentralError) as refused:
        write_sheet(tmp_path / "controls.png")
    assert str(refused.value) == f"{tmp_path / 'controls.png'}: the control sheet is a .pdf"
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    with pytest.raises(CentralError, match=f"^font {tmp_path / 'broken.ttf'}: "):
        write_sheet(tmp_path / "controls.pdf", font=tmp_path / "broken.ttf")


# -- the sheet as printed: where each code and its labels are ------------------------------------------------

MM = 25.4 / 72  # millimetres per PDF point
DPI = 300


class Page:
    """One printed page: its barcodes (as a scanner reads them) and its lines of text, in millimetres
    from the page's top-left corner as (left, top, right, bottom)."""

    def __init__(self, page):
        width, height = page.get_size()
        self.width, self.height = width * MM, height * MM
        self.image = page.render(scale=DPI / 72).to_pil().convert("L")
        px = 25.4 / DPI
        self.codes = {}
        for read in zxingcpp.read_barcodes(self.image):
            corners = [read.position.top_left, read.position.top_right, read.position.bottom_right,
                       read.position.bottom_left]
            self.codes[read.text] = (min(p.x for p in corners) * px, min(p.y for p in corners) * px,
                                     max(p.x for p in corners) * px, max(p.y for p in corners) * px)
        textpage = page.get_textpage()
        self.lines = {}
        for index in range(textpage.count_rects()):
            left, bottom, right, top = textpage.get_rect(index)
            self.lines[textpage.get_text_bounded(left, bottom, right, top)] = (
                left * MM, self.height - top * MM, right * MM, self.height - bottom * MM)

    def ink(self) -> tuple[float, float, float, float]:
        left, top, right, bottom = self.image.point(lambda v: 255 if v < 128 else 0).getbbox()
        return tuple(v * 25.4 / DPI for v in (left, top, right, bottom))


@pytest.fixture
def sheet(tmp_path):
    # Drawn anew for each test (not once per module): mutation testing runs, for a change in the sheet,
    # the tests that drew it, and a shared sheet is drawn by the first test alone.
    path = tmp_path / "controls.pdf"
    write_sheet(path)
    pdf = pypdfium2.PdfDocument(str(path))
    try:
        yield path, [Page(page) for page in pdf]
    finally:
        pdf.close()


def _centre(box):
    return (box[0] + box[2]) / 2


def test_each_code_has_its_own_text_then_its_chinese_then_its_english_label_centred_just_below_it(sheet):
    _, pages = sheet
    placed = {}
    for page in pages:
        for code, bars in page.codes.items():
            placed[code] = (page, bars)
    assert sorted(placed) == sorted(code for code, _, _ in controls.SHEET)
    for code, chinese, english in controls.SHEET:
        page, bars = placed[code]
        below = [page.lines[text] for text in (code, chinese, english)]
        for box in below:
            assert abs(_centre(box) - _centre(bars)) < 1.5, (code, box, bars)  # centred under its bars
        tops = [box[1] for box in below]
        assert bars[3] <= tops[0] < tops[1] < tops[2] <= bars[3] + 20, (code, bars, below)  # in that order, close
        for upper, lower in zip(below, below[1:]):
            assert upper[3] <= lower[1] + 0.3, (code, upper, lower)  # one above the other, not over it


def test_a_codes_labels_are_closer_to_it_than_to_the_code_printed_below_them(sheet):
    """Down a column, a code's bars, its text and its two labels read as one group: no space within the group is
    as wide as the space between its last label and the next code's bars, so no label seems to name that code."""
    _, pages = sheet
    labels = {code: (chinese, english) for code, chinese, english in controls.SHEET}
    below_another = 0
    for page in pages:
        for code, bars in page.codes.items():
            group = [bars] + [page.lines[text] for text in (code, *labels[code])]
            under = [other for other in page.codes.values()
                     if abs(_centre(other) - _centre(bars)) < 1.5 and other[1] > bars[3]]
            if not under:
                continue  # the last code of its column
            below_another += 1
            next_bars = min(under, key=lambda box: box[1])
            widest = max(lower[1] - upper[3] for upper, lower in zip(group, group[1:]))
            assert widest < next_bars[1] - group[-1][3], (code, group, next_bars)
    assert below_another >= len(controls.SHEET) // 2  # most codes have another below them


def test_a_codes_text_and_its_two_labels_are_set_as_evenly_spaced_lines(sheet):
    """Under each code, its text, the Chinese label and the English label read as three lines of one block: the space
    between the code's text and the Chinese label is the space between the two labels, to half a millimetre, so no
    line drifts towards the one above it or away from it (a gap a third narrower or wider than the other shows)."""
    _, pages = sheet
    labels = {code: (chinese, english) for code, chinese, english in controls.SHEET}
    seen = 0
    for page in pages:
        for code, bars in page.codes.items():
            text, chinese, english = (page.lines[words] for words in (code, *labels[code]))
            above, below = chinese[1] - text[3], english[1] - chinese[3]
            assert above > 0 and below > 0, (code, text, chinese, english)
            assert abs(above - below) < 0.5, (code, above, below)
            seen += 1
    assert seen == len(controls.SHEET)


def test_the_two_columns_sit_as_far_from_the_left_edge_as_from_the_right(sheet):
    """The columns mirror each other across the middle of the page: the left column's codes are centred as far from
    the left edge as the right column's from the right edge, and the codes of a column are centred on one line, so
    the sheet looks square on the page and folds or cuts in half between the columns."""
    _, pages = sheet
    for page in pages:
        left = [_centre(bars) for bars in page.codes.values() if _centre(bars) < page.width / 2]
        right = [_centre(bars) for bars in page.codes.values() if _centre(bars) > page.width / 2]
        assert left and right
        assert max(left) - min(left) < 0.3 and max(right) - min(right) < 0.3, (left, right)
        from_left, from_right = sum(left) / len(left), page.width - sum(right) / len(right)
        assert abs(from_left - from_right) < 0.5, (from_left, from_right)


def test_every_page_is_titled_and_nothing_is_printed_in_the_printers_margin(sheet):
    path, pages = sheet
    assert pypdfium2.PdfDocument(str(path)).get_metadata_dict()["Title"] == "counterbox control codes"
    for page in pages:
        assert (round(page.width), round(page.height)) == (210, 297)  # A4
        title = page.lines["counterbox 控制码 / control codes"]
        assert title[1] >= 10 and all(title[3] < bars[1] for bars in page.codes.values())  # on it, above every code
        left, top, right, bottom = page.ink()
        assert left >= 10 and top >= 10 and right <= page.width - 10 and bottom <= page.height - 10
        # The two columns of codes are centred on the page.
        centres = [_centre(bars) for bars in page.codes.values()]
        assert abs((min(centres) + max(centres)) / 2 - page.width / 2) < 1, centres


def test_codes_keep_their_quiet_zones_and_bars_a_cheap_scanner_reads(sheet):
    _, pages = sheet
    px = 25.4 / DPI
    for page in pages:
        for code, (left, top, right, bottom) in page.codes.items():
            middle = round((top + bottom) / 2 / px)
            row = [page.image.getpixel((x, middle)) < 128 for x in range(round(left / px) - 2, round(right / px) + 3)]
            bars = sum(1 for x in range(1, len(row)) if row[x] and not row[x - 1])
            inked = [x for x, dark in enumerate(row) if dark]
            # Code 128: 11 modules and 3 bars a character, the stop 13 modules and 4 bars.
            narrow = (inked[-1] - inked[0] + 1) / (11 * (bars - 1) // 3 + 2) * px
            assert 0.25 <= narrow <= 0.5, (code, narrow)  # bars neither too fine nor too wide for the cell
            column = [page.image.getpixel((round(left / px) + 1, y)) < 128 for y in range(page.image.height)]
            assert sum(column) * px >= 10, code  # bars tall enough to aim at
            # Ten narrow bars of blank paper either side (Code 128's quiet zone): no neighbour's ink there.
            for x0, x1 in ((left - 10 * narrow, left - 0.3), (right + 0.3, right + 10 * narrow)):
                zone = page.image.crop((round(x0 / px), round(top / px), round(x1 / px), round(bottom / px)))
                assert zone.point(lambda v: 255 if v < 128 else 0).getbbox() is None, (code, x0, x1)


def test_the_command_says_how_many_pages_it_wrote_and_to_print_them_unscaled(tmp_path, capsys):
    path = tmp_path / "controls.pdf"
    assert ops.main(["controls", "sheet", str(path)]) == 0
    pages = len(pypdfium2.PdfDocument(str(path)))
    assert pages == 2
    assert capsys.readouterr().out == f"control sheet written to {path}: 2 pages; print it at 100% scale\n"


def test_a_sheet_that_cannot_be_written_is_named_with_the_reason(tmp_path, capsys):
    path = tmp_path / "no-such-directory" / "controls.pdf"
    with pytest.raises(CentralError) as refused:
        write_sheet(path)
    assert str(refused.value) == f"{path}: No such file or directory"
    assert ops.main(["controls", "sheet", str(path)]) == 2
    assert "counterbox-ops: error: " in capsys.readouterr().err


def test_the_labels_are_set_in_the_font_given(tmp_path):
    path = tmp_path / "controls.pdf"
    write_sheet(path, font=Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"))
    assert b"/FontFile2" in path.read_bytes() and b"WenQuanYi" in path.read_bytes()
    text = "".join(page.get_textpage().get_text_range() for page in pypdfium2.PdfDocument(str(path)))
    assert all(chinese in text for _, chinese, _ in controls.SHEET)


def test_without_a_chinese_font_installed_the_labels_use_the_song_face_every_viewer_supplies(tmp_path, monkeypatch):
    from central import sheet

    monkeypatch.setattr(sheet, "WQY", tmp_path / "no-wqy-here.ttc")  # a machine without fonts-wqy-microhei
    path = tmp_path / "controls.pdf"
    assert write_sheet(path) == 2
    data = path.read_bytes()
    assert b"/STSong-Light" in data and b"/FontFile2" not in data  # named, not embedded: the viewer's own
    text = "".join(page.get_textpage().get_text_range() for page in pypdfium2.PdfDocument(str(path)))
    assert all(chinese in text and english in text for _, chinese, english in controls.SHEET)


def test_sheets_written_one_after_another_each_use_their_own_font(tmp_path):
    """``write_sheet`` called twice in one process (a program making sheets for several printers): the second
    sheet's labels are in its own font, not in the one registered for the first."""
    import reportlab

    # Bitstream Vera comes with reportlab itself; WenQuanYi with the Chinese font ./bootstrap installs.
    vera, wqy = (Path(reportlab.__file__).parent / "fonts" / "Vera.ttf",
                 Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"))
    write_sheet(tmp_path / "first.pdf", font=vera)
    write_sheet(tmp_path / "second.pdf", font=wqy)
    assert b"BitstreamVeraSans" in (tmp_path / "first.pdf").read_bytes()
    second = (tmp_path / "second.pdf").read_bytes()
    assert b"WenQuanYi" in second and b"BitstreamVeraSans" not in second
