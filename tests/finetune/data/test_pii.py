from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune.data.pii import PII_TYPES, luhn_valid, scrub


def _reference_luhn(digits: str) -> bool:
    """The textbook Luhn algorithm, written independently of the module's."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        total += sum(divmod(2 * d, 10)) if i % 2 == 1 else d
    return total % 10 == 0


# (planted value, its type): each is replaced whole when it stands between plain words.
POSITIVES = [
    ("john.doe@example.com", "EMAIL"),
    ("first_last+tag@mail.example.co.uk", "EMAIL"),
    ("ADMIN@EXAMPLE.ORG", "EMAIL"),
    ("GB82 WEST 1234 5698 7654 32", "IBAN"),
    ("GB82WEST12345698765432", "IBAN"),
    ("DE89370400440532013000", "IBAN"),
    ("DE89 3704 0044 0532 0130 00", "IBAN"),
    ("FR14 2004 1010 0505 0001 3M02 606", "IBAN"),
    ("NL91ABNA0417164300", "IBAN"),
    ("4111 1111 1111 1111", "CREDIT_CARD"),
    ("4111111111111111", "CREDIT_CARD"),
    ("5500-0000-0000-0004", "CREDIT_CARD"),
    ("5555 5555 5555 4444", "CREDIT_CARD"),
    ("378282246310005", "CREDIT_CARD"),
    ("3782 822463 10005", "CREDIT_CARD"),
    ("6011111111111117", "CREDIT_CARD"),
    ("30569309025904", "CREDIT_CARD"),
    ("4222222222222", "CREDIT_CARD"),
    ("2001:db8::1", "IPV6"),
    ("fe80::1ff:fe23:4567:890a", "IPV6"),
    ("::1", "IPV6"),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "IPV6"),
    ("::ffff:192.0.2.1", "IPV6"),
    ("fe80::1%eth0", "IPV6"),
    ("192.168.0.1", "IPV4"),
    ("10.0.0.1", "IPV4"),
    ("255.255.255.255", "IPV4"),
    ("8.8.8.8", "IPV4"),
    ("+44 20 7946 0958", "PHONE"),
    ("+1-202-555-0143", "PHONE"),
    ("+1 (202) 555-0143", "PHONE"),
    ("+442079460958", "PHONE"),
    ("+33 6 12 34 56 78", "PHONE"),
    ("(202) 555-0143", "PHONE"),
    ("202-555-0143", "PHONE"),
    ("202.555.0143", "PHONE"),
    ("1-202-555-0143", "PHONE"),
    ("020 7946 0958", "PHONE"),
    ("07700 900123", "PHONE"),
    ("06 12 34 56 78", "PHONE"),
]


@pytest.mark.parametrize(("value", "pii_type"), POSITIVES)
def test_planted_pii_is_replaced_whole(value, pii_type):
    out, counts = scrub(f"before {value} after")
    assert out == f"before <{pii_type}> after"
    assert counts == Counter({pii_type: 1})


@pytest.mark.parametrize(("value", "pii_type"), POSITIVES)
def test_planted_pii_is_replaced_at_the_edges_and_before_punctuation(value, pii_type):
    assert scrub(value)[0] == f"<{pii_type}>"
    assert scrub(f"({value}), then.")[0] == f"(<{pii_type}>), then."


NEGATIVES = [
    # e-mail look-alikes
    "user@localhost",
    "@handle said hi",
    "a @ b.com",
    # IBANs with a wrong check digit, or too short
    "GB82 WEST 1234 5698 7654 33",
    "DE88370400440532013000",
    "GB82 WEST 1234",
    # Luhn-invalid or not card-like numbers
    "4111 1111 1111 1112",
    "order 4111111111111112 shipped",
    "1234 5678 9012 3456",
    "0101101001010",
    "4111 1111 1111 1111 1111 1",
    "4111.1111.1111.1111",
    # versions, out-of-range octets, times, code
    "version 1.2.3.4.5",
    "v1.2.3.4",
    "256.1.1.1",
    "192.168.0.1000",
    "macOS 10.15.7",
    "at 12:30",
    "at 10:45:00 sharp",
    "12:30:45.250",
    "std::vector<int>",
    "Foo::Bar::baz()",
    "xs[::2] and xs[1::3]",
    "a :: b",
    "ratio 1:2:3",
    "MAC 00:1A:2B:3C:4D:5E",
    # years, prices, dates, counts
    "back in 2024",
    "it costs $1,299.00",
    "€12.299.000 budget",
    "on 2024-01-15",
    "on 15.01.2024",
    "12.345.678 people",
    "1,234,567 rows",
    "pages 100-120",
    "ISBN 978-3-16-148410-0",
    # URLs without secrets
    "https://example.com/search?q=monkey&page=2",
    "https://example.com/?monkey=banana&hotkey=f5",
    "http://localhost:8080/path",
    # placeholders already there
    "<EMAIL> <PHONE> <CREDIT_CARD> <IPV4> <IPV6> <IBAN> <URL_SECRET>",
    "https://<URL_SECRET>@host.example?token=<URL_SECRET>",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_look_alikes_are_kept(text):
    assert scrub(text) == (text, Counter())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:pass@example.com/x", "https://<URL_SECRET>@example.com/x"),
        (
            "postgres://admin:s3cr3t@db.internal:5432/app",
            "postgres://<URL_SECRET>@db.internal:5432/app",
        ),
        ("redis://:p4ss@cache:6379", "redis://<URL_SECRET>@cache:6379"),
        ("ftp://me:p@ss@files.example.org/", "ftp://<URL_SECRET>@files.example.org/"),
        ("GET /v1?api_key=abc123&page=2", "GET /v1?api_key=<URL_SECRET>&page=2"),
        (
            "https://x.io/cb#access_token=eyJ.abc&state=ok",
            "https://x.io/cb#access_token=<URL_SECRET>&state=ok",
        ),
        (
            "https://b.s3.aws/k?X-Amz-Signature=de4db33f",
            "https://b.s3.aws/k?X-Amz-Signature=<URL_SECRET>",
        ),
        (
            "https://x.io/?refresh_token=r1&accessToken=a2",
            "https://x.io/?refresh_token=<URL_SECRET>&accessToken=<URL_SECRET>",
        ),
        ("see https://x.io/?token=abc.", "see https://x.io/?token=<URL_SECRET>."),
        ("[docs](https://x.io/?token=abc)", "[docs](https://x.io/?token=<URL_SECRET>)"),
    ],
)
def test_url_secrets_keep_the_name_and_drop_the_value(text, expected):
    out, counts = scrub(text)
    assert out == expected
    assert set(counts) == {"URL_SECRET"}


def test_every_listed_secret_parameter_name_is_scrubbed():
    names = ["token", "access_token", "api_key", "apikey", "key", "secret", "password", "pwd"]
    names += ["sig", "signature", "auth", "client_secret"]
    url = "https://api.example.com/v1?" + "&".join(f"{n}=v{i}" for i, n in enumerate(names))
    out, counts = scrub(url)
    assert counts == Counter({"URL_SECRET": len(names)})
    assert out == "https://api.example.com/v1?" + "&".join(f"{n}=<URL_SECRET>" for n in names)


def test_url_secret_runs_before_email_so_userinfo_is_not_an_address():
    text = "clone https://bob:hunter2@git.example.com/repo.git"
    assert scrub(text) == (
        "clone https://<URL_SECRET>@git.example.com/repo.git",
        Counter({"URL_SECRET": 1}),
    )
    # With EMAIL alone the password would read as an address and the user name would leak.
    assert scrub(text, types=["EMAIL"])[0] == "clone https://bob:<EMAIL>/repo.git"


def test_email_domain_must_be_a_name_so_an_ip_host_goes_to_ipv4():
    assert scrub("ssh root@192.168.1.1") == ("ssh root@<IPV4>", Counter({"IPV4": 1}))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ping 8.8.8.8:53 now", "ping <IPV4>:53 now"),
        ("http://10.1.2.3/admin", "http://<IPV4>/admin"),
        ("http://[2001:db8::1]:8080/", "http://[<IPV6>]:8080/"),
        ("hosts 10.0.0.1,10.0.0.2", "hosts <IPV4>,<IPV4>"),
        ("range 10.0.0.1-10.0.0.9", "range <IPV4>-<IPV4>"),
    ],
)
def test_ips_inside_urls_and_lists(text, expected):
    assert scrub(text)[0] == expected


def test_iban_that_runs_into_the_next_word_is_cut_at_its_group():
    text = "pay BE68 5390 0754 7034 THEN DE89 3704 0044 0532 0130 00 ok"
    assert scrub(text) == ("pay <IBAN> THEN <IBAN> ok", Counter({"IBAN": 2}))


def test_luhn_invalid_number_beside_a_phone_is_kept_whole():
    # One digit run: not a card (too long), and its tail is not taken for a phone.
    text = "ref 1234 5678 9012 3456 7890"
    assert scrub(text) == (text, Counter())


def test_a_card_glued_to_a_phone_is_found_once_the_phone_is_out():
    out, counts = scrub("4111 1111 1111 1111 - +1-202-555-0143")
    assert out == "<CREDIT_CARD> - <PHONE>"
    assert counts == Counter({"CREDIT_CARD": 1, "PHONE": 1})


def test_counts_per_type():
    text = (
        "Hi, I'm jane@example.com (cc ops@example.org). Card 4111 1111 1111 1111, "
        "IBAN DE89370400440532013000, call +44 20 7946 0958 or (202) 555-0143 or 202-555-0143. "
        "Box 10.0.0.7 / fe80::1, repo https://ci:tok3n@git.example.com/?api_key=k&sig=s. "
        "Not PII: 2024-01-15, $1,299.00, v1.2.3.4.5, 12:30, order 4111 1111 1111 1112."
    )
    out, counts = scrub(text)
    assert counts == Counter(
        {"EMAIL": 2, "CREDIT_CARD": 1, "IBAN": 1, "PHONE": 3, "IPV4": 1, "IPV6": 1, "URL_SECRET": 3}
    )
    for pii_type, n in counts.items():
        assert out.count(f"<{pii_type}>") == n
    assert out.endswith(
        "Not PII: 2024-01-15, $1,299.00, v1.2.3.4.5, 12:30, order 4111 1111 1111 1112."
    )


def test_types_picks_a_subset_and_rejects_unknown_names():
    text = "jane@example.com 10.0.0.7 202-555-0143"
    assert scrub(text, types=["EMAIL"]) == ("<EMAIL> 10.0.0.7 202-555-0143", Counter({"EMAIL": 1}))
    assert scrub(text, types=("PHONE", "IPV4"))[0] == "jane@example.com <IPV4> <PHONE>"
    assert scrub(text, types=[]) == (text, Counter())
    with pytest.raises(ValueError, match="SSN"):
        scrub(text, types=["EMAIL", "SSN"])


def test_pii_types_are_in_order_of_application():
    assert PII_TYPES == ("URL_SECRET", "EMAIL", "IBAN", "CREDIT_CARD", "IPV6", "IPV4", "PHONE")


def test_clean_text_comes_back_unchanged():
    text = "hey how are you? i'm good, just got back from the gym lol"
    out, counts = scrub(text)
    assert out is text
    assert counts == Counter()


# --- luhn_valid --------------------------------------------------------------------------------

LUHN_VALID = [
    "4111111111111111",
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "378282246310005",
    "6011111111111117",
    "30569309025904",
    "4012888888881881",
    "79927398713",
    "0000000000000",
    "18",
]
LUHN_INVALID = [
    "4111111111111112",
    "79927398710",
    "79927398711",
    "1234567812345678",
    "",
    "0",
    "7",
    "4111-1111-1111-111x",
    "4111.1111.1111.1111",
    "٤١١١١١١١١١١١١١١١",  # Arabic-Indic digits are not card digits
]


@pytest.mark.parametrize("number", LUHN_VALID)
def test_luhn_valid_accepts_known_good_numbers(number):
    assert luhn_valid(number)


@pytest.mark.parametrize("number", LUHN_INVALID)
def test_luhn_valid_rejects_bad_numbers(number):
    assert not luhn_valid(number)


@given(st.text(alphabet="0123456789", min_size=2, max_size=25))
def test_luhn_valid_matches_the_textbook_algorithm(digits):
    assert luhn_valid(digits) == _reference_luhn(digits)


@given(st.text(alphabet="0123456789", min_size=1, max_size=24))
def test_exactly_one_check_digit_completes_a_payload(payload):
    assert sum(luhn_valid(payload + str(d)) for d in range(10)) == 1


# --- idempotence and counts over random text ---------------------------------------------------

_FRAGMENTS = (
    [value for value, _ in POSITIVES]
    + NEGATIVES
    + [
        "https://u:p@h.example.com/x?token=ab1&sig=9",
        "?api_key=zz",
        "DE89",
        "3704",
        "1111",
        "::",
        "fe80",
    ]
)
_NOISE = st.text(alphabet="0123456789abcdefAF .-:@+()=&?#<>/xyz_[]%,GBDE", max_size=8)
_SEPARATORS = st.sampled_from(["", "", " ", "-", ".", ":", "@", "/", "\n", ", "])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(st.sampled_from(_FRAGMENTS), _NOISE), _SEPARATORS), max_size=12)
)
def test_scrub_is_idempotent_and_counts_what_it_inserts(parts):
    text = "".join(fragment + sep for fragment, sep in parts)
    once, counts = scrub(text)
    assert scrub(once) == (once, Counter())
    for pii_type in PII_TYPES:
        placeholder = f"<{pii_type}>"
        assert once.count(placeholder) - text.count(placeholder) == counts[pii_type]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from(POSITIVES), st.sampled_from(["hello", "ok so", "lol", "well"])),
        max_size=10,
    )
)
def test_planted_pii_between_words_is_all_found(parts):
    text = " and ".join(p if isinstance(p, str) else p[0] for p in parts)
    expected = Counter(p[1] for p in parts if not isinstance(p, str))
    out, counts = scrub(text)
    assert counts == expected
    assert not any(value in out for value, _ in POSITIVES)
