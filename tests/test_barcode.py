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
    ],
)
def test_valid_gs1_codes_pass_their_check_digit(code, symbology):
    assert classify(code) == classify(code)  # pure
    barcode = classify(code)
    assert (barcode.symbology, barcode.valid) == (symbology, True)


@pytest.mark.parametrize("code", ["6901028075832", "96385075", "036000291453", "0000000000001"])
def test_a_wrong_check_digit_is_invalid(code):
    assert classify(code).valid is False


@pytest.mark.parametrize("code", ["PROMO-$5", "12345", "ABC123", "69010280758310", "６９０１０２８０７５８３１"])
def test_other_codes_are_raw_and_left_to_the_counter(code):
    barcode = classify(code)
    assert (barcode.symbology, barcode.valid, barcode.data) == (Symbology.RAW, True, code)


def test_check_digit_of_a_known_ean13():
    assert gs1_check_digit("690102807583") == 1
