import pytest

from drivers.barcode import ADD_ON_ALONE, CHECK_DIGIT, NOT_EAN, Barcode, Symbology, classify, gs1_check_digit, upce_to_upca


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


def test_a_cases_gtin14_is_checked_like_an_ean_and_keyed_as_itself():
    """A case row with a typo in its 14 digits once loaded, and the real case scanned was then an unknown product."""
    assert classify("16901028075838") == Barcode("16901028075838", Symbology.GTIN14, "")
    assert classify("16901028075838").key == "16901028075838"
    assert classify("16901028075839").reason == CHECK_DIGIT
    assert classify("06901028075831").key == classify("6901028075831").key  # indicator 0: the EAN-13 itself
    assert classify("16901028075838", "]E0").reason == NOT_EAN  # fourteen digits are no EAN


@pytest.mark.parametrize("aim", ["]I0", "]I1"])
def test_an_itf14_named_by_its_symbology_identifier_is_checked_like_any_gtin14(aim):
    """Interleaved 2 of 5 detects little of a misread itself: a case's ITF-14 has its GS1 check digit for
    that. A HID POS scanner always names the symbology, and a misread case code was once sold."""
    assert classify("16901028075838", aim) == Barcode("16901028075838", Symbology.GTIN14, "")
    assert classify("16901028075839", aim).reason == CHECK_DIGIT
    assert classify("1234567890", aim) == Barcode("1234567890", Symbology.RAW)  # not a case's: the counter's


@pytest.mark.parametrize("code", ["PROMO-$5", "12345", "ABC123", "690102807583101", "６９０１０２８０７５８３１"])
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


@pytest.mark.parametrize("code, aim, valid, reason", [
    ("690102807583112", "]E3", True, ""),  # an EAN-13 and its 2-digit add-on (a periodical's issue)
    ("690102807583112345", "]E3", True, ""),  # and a 5-digit one
    ("03600029145212", "]E3", True, ""),  # a UPC-A sent as its 12 digits, and an add-on
    ("9638507412", "]E3", True, ""),  # an EAN-8 and an add-on
    ("690102807583012", "]E3", False, CHECK_DIGIT),  # the product's own code misread: never a sale
    ("9638507512345", "]E3", False, CHECK_DIGIT),
    ("690102807", "]E3", False, NOT_EAN),  # no add-on's length left over
    ("12", "]E1", False, ADD_ON_ALONE),  # an add-on sent alone: the product's code was not read
    ("12345", "]E2", False, ADD_ON_ALONE),
    ("9638507", "]E4", False, NOT_EAN),  # an EAN-8 of seven digits: a misread
    ("69010280758", "]E0", False, NOT_EAN),
    ("6901028075831A", "]E0", False, NOT_EAN),
])
def test_an_ean_named_so_by_its_aim_identifier_that_is_not_a_whole_one_is_a_misread(code, aim, valid, reason):
    """The scanner says it read an EAN or UPC (AIM "]E"): whatever is not one whole, with its check digit right,
    is a misread, never a sale of an unknown product."""
    barcode = classify(code, aim)
    assert (barcode.valid, barcode.reason) == (valid, reason)


@pytest.mark.parametrize("upce, upca", [
    ("04252614", "042100005264"),  # last digit 0-2: the manufacturer's two digits, it, four zeros, three
    ("01234565", "012345000065"),  # 5-9: five digits, four zeros, it
    ("01234531", "012300000451"),  # 3: three digits, five zeros, two
    ("01234543", "012340000053"),  # 4: four digits, five zeros, one
    ("11234562", "112345000062"),  # number system 1
])
def test_a_upce_is_its_upca_with_the_zeros_left_out_and_one_product_with_it(upce, upca):
    assert upce_to_upca(upce) == upca
    assert classify(upca).valid
    assert classify(upce, "]E0").key == classify(upca).key == classify("0" + upca).key == upca.zfill(14)


def test_eight_digits_that_fail_ean8s_check_but_pass_upces_are_a_upce_and_no_misread():
    """A small pack's UPC-E, as scanners send it by default: refused as a misread EAN-8 before."""
    barcode = classify("04252614")
    assert (barcode.symbology, barcode.valid, barcode.key) == (Symbology.UPCE, True, "00042100005264")
    assert classify("04252614", "]E0").symbology is Symbology.UPCE


def test_a_upce_that_passes_ean8s_check_too_is_a_upce_unless_the_scanner_names_it_ean8():
    """Most UPC-Es (a last digit of 5 to 9) pass EAN-8's check as well: a price list's row, read without
    an AIM identifier, and the scan of it, with or without one, are keyed alike."""
    for aim in ("", "]E0"):
        assert (classify("01234565", aim).symbology, classify("01234565", aim).key) == (Symbology.UPCE, "00012345000065")
    assert classify("09141773").key == classify("091417000073").key == classify("09141773", "]E0").key
    assert (classify("01234565", "]E4").symbology, classify("01234565", "]E4").key) == (Symbology.EAN8, "00000001234565")
    assert classify("96385074").symbology is Symbology.EAN8  # number system 9: never a UPC-E


@pytest.mark.parametrize("code, aim", [("04252615", ""), ("04252615", "]E0"), ("24252615", ""), ("96385075", "]E0")])
def test_eight_digits_that_pass_neither_check_are_a_misread(code, aim):
    """Nor is a code of number system 2-9 ever a UPC-E."""
    assert classify(code, aim).valid is False


@pytest.mark.parametrize("body", ["0120453", "0122453", "0123054", "0123406", "0000050", "0000147"],
                         ids=["3-after-0", "3-after-2", "4-after-0", "5-9-after-0", "upca-00000", "upca-0000"])
def test_eight_digits_another_code_stands_for_as_well_are_no_upce(body):
    """GS1 suppresses zeros one way only: "0 000003" would stand for the UPC-A that "0 000000" does; and
    a UPC-A beginning 0000 has an EAN-8's GTIN-14. Two codes are never one product: such digits, with
    the check digit a UPC-E of them would carry, are an EAN-8, valid or not by its own check."""
    code = body + str(gs1_check_digit(upce_to_upca(body + "0")[:-1]))
    assert classify(code).symbology is Symbology.EAN8


def test_every_upce_and_every_ean8_is_a_product_of_its_own():
    """No two eight-digit codes of number system 0 share a key, whichever of the two each is taken for."""
    keys = {}
    for n in range(0, 10**7, 53):
        code = f"{n:07d}" + str(gs1_check_digit(f"{n:07d}"))  # a valid EAN-8
        for candidate in (code, code[:7] + str(gs1_check_digit(upce_to_upca(code)[:-1]))):  # and a valid UPC-E
            assert keys.setdefault(classify(candidate).key, candidate) == candidate
    assert sum(classify(code).symbology is Symbology.UPCE for code in keys.values()) > 20_000


def test_eight_digits_that_are_an_ean8_and_a_whole_upce_each_have_the_other_reading():
    from drivers.barcode import other_reading

    as_upce, as_ean8 = classify("01234565"), classify("01234565", "]E4")
    assert (as_upce.symbology, as_ean8.symbology) == (Symbology.UPCE, Symbology.EAN8)
    assert other_reading(as_upce) == as_ean8 and other_reading(as_ean8) == as_upce
    assert other_reading(classify("96385074")) is None  # an EAN-8 only: no UPC-E begins with 9
    assert other_reading(classify("6901028075831")) is None
    assert other_reading(classify("01234566", "]E4")) is None  # its EAN-8 check digit is wrong: no reading stands
