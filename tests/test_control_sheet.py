"""The printed sheet of control codes, read back as a scanner would: every code on it is the control it says."""

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
    with pytest.raises(CentralError, match="is a .pdf"):
        write_sheet(tmp_path / "controls.png")
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    with pytest.raises(CentralError, match="broken.ttf"):
        write_sheet(tmp_path / "controls.pdf", font=tmp_path / "broken.ttf")
