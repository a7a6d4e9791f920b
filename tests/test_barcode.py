import pytest

from drivers.barcode import Symbology, classify, gs1_check_digit


@pytest.mark.parametrize(
    "code,symbology",
    [
        ("6901028075831", Symbology.EAN13),
        ("4006381333931", Symbology.EAN13),
        ("96385074", Symbology.EAN8),
        ("40063812", Symbology.EAN8),
        ("036000291452", Symbology.UPCA),
        ("0036000291452", Symbology.UPCA),  # a UPC-A read as EAN-13
    ],
)
def test_valid_gs1_codes_pass_their_check_digit(code, symbology):
    barcode = classify(code)
    assert (barcode.data, barcode.symbology, barcode.valid) == (code, symbology, True)
    assert barcode.key == code.zfill(14)  # the GTIN-14 a price list knows it by


@pytest.mark.parametrize("code", ["6901028075832", "96385075", "036000291453", "0000000000001"])
def test_a_wrong_check_digit_is_invalid(code):
    assert classify(code).valid is False


@pytest.mark.parametrize("code", ["PROMO-$5", "12345", "ABC123", "69010280758310", "６９０１０２８０７５８３１"])
def test_other_codes_are_raw_and_left_to_the_counter(code):
    barcode = classify(code)
    assert (barcode.symbology, barcode.valid, barcode.data) == (Symbology.RAW, True, code)


def test_check_digit_of_a_known_ean13():
    assert gs1_check_digit("690102807583") == 1


def test_a_upca_and_its_ean13_reading_are_one_product():
    assert classify("036000291452").key == classify("0036000291452").key == "00036000291452"
    assert classify("6901028075831").key == "06901028075831"
    assert classify("PROMO-$5").key == "PROMO-$5"


@pytest.mark.parametrize(
    "aim,symbology",
    [("]C0", Symbology.CODE128), ("]C1", Symbology.GS1_128), ("]Q1", Symbology.QR), ("]d2", Symbology.DATAMATRIX),
     ("]A0", Symbology.CODE39), ("]L2", Symbology.PDF417), ("]X0", Symbology.RAW)],
)
def test_the_aim_identifier_names_the_symbology(aim, symbology):
    barcode = classify("0104912345678904\x1d10ABC", aim)
    assert (barcode.symbology, barcode.valid) == (symbology, True)


def test_an_ean_aim_identifier_still_checks_the_digit():
    assert classify("6901028075832", "]E0").valid is False
    assert classify("6901028075831", "]E0").symbology is Symbology.EAN13
