"""
Tests for L{txgate.policy.o365} and C{txgate o365 import}: converting
Microsoft's endpoints JSON into a category list.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from io import StringIO

from twisted.trial.unittest import SynchronousTestCase

from txgate.cli import main
from txgate.policy.categories import load_categories
from txgate.policy.o365 import EndpointsFormatError, convert, render

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "o365-sample.json")

SKYPE_ENTRIES = [
    "*.lync.com",
    "teams.cloud.microsoft",
    "*.teams.cloud.microsoft",
    "teams.microsoft.com",
    "*.teams.microsoft.com",
    "52.112.0.0/14",
    "52.122.0.0/15",
    "2603:1027::/48",
    "2603:1037::/48",
    "2603:1047::/48",
    "2603:1057::/48",
    "2603:1063::/38",
    "2620:1ec:6::/48",
    "2620:1ec:40::/42",
]

SKYPE_FILE = (
    "\n".join(
        [
            "# Microsoft 365 endpoints: service area Skype (Microsoft Teams),",
            "# categories Optimize, Allow.",
            "# Generated from o365-sample.json by txgate o365 import on 2025-07-01.",
            "#",
            "# Source format: Microsoft's endpoints JSON, from",
            "#   https://endpoints.office.com/endpoints/worldwide?clientrequestid=GUID",
            "# To refresh, download it again and run:",
            "#   txgate o365 import endpoints.json --service-area Skype --output THIS-FILE",
            "#",
            "# Entries: 5 host, 2 IPv4, 7 IPv6.",
            "",
            *SKYPE_ENTRIES,
        ]
    )
    + "\n"
)


def _sample() -> object:
    with open(SAMPLE, encoding="utf-8") as f:
        return json.load(f)


class ConvertTests(SynchronousTestCase):
    """
    convert selects endpoint sets by service area and category.
    """

    def test_skype_sample(self) -> None:
        """The sample's Skype Optimize/Allow sets become hosts, then IPv4, then IPv6, without duplicates."""
        conversion = convert(_sample())
        self.assertEqual(list(conversion.entries()), SKYPE_ENTRIES)
        self.assertEqual(conversion.display_names, ("Microsoft Teams",))
        self.assertEqual(conversion.skipped, ())

    def test_render(self) -> None:
        """The file is a dated header and one entry per line."""
        text = render(convert(_sample()), source="o365-sample.json", today=datetime.date(2025, 7, 1))
        self.assertEqual(text, SKYPE_FILE)

    def test_rendered_file_loads(self) -> None:
        """What render writes, load_categories reads."""
        path = os.path.abspath(self.mktemp()) + ".txt"
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(convert(_sample()), source="x.json", today=datetime.date(2025, 7, 1)))
        categories = load_categories([path], "forward.toml")
        self.assertEqual(len(categories.lookup("sip.online.lync.com", "52.112.9.9")), 1)

    def test_other_area_and_category(self) -> None:
        """Service area and category are chosen case-insensitively; Default sets can be taken too."""
        conversion = convert(_sample(), "skype", ["default"])
        self.assertEqual(
            conversion.hosts,
            (
                "adl.windows.com",
                "*.keydelivery.mediaservices.windows.net",
                "*.skype.com",
                "*.streaming.mediaservices.windows.net",
            ),
        )
        self.assertEqual((conversion.ipv4, conversion.ipv6), ((), ()))

    def test_placeholders_skipped(self) -> None:
        """URLs with a <tenant> placeholder are left out and reported, with the reason in the header."""
        conversion = convert(_sample(), "Exchange", ["Default"])
        self.assertEqual(conversion.hosts, ("*.outlook.com",))
        self.assertEqual([(s.url, s.endpoint_id) for s in conversion.skipped], [("autodiscover.<tenant>.onmicrosoft.com", 8)])
        text = render(conversion, source="x.json", today=datetime.date(2025, 7, 1), service_area="Exchange",
                      categories=["Default"])
        self.assertIn(
            "#   autodiscover.<tenant>.onmicrosoft.com (id 8): a per-tenant placeholder; list your own names by hand\n",
            text,
        )
        self.assertIn("--service-area Exchange --category Default --output THIS-FILE", text)

    def test_partial_wildcard_skipped(self) -> None:
        """A wildcard inside a label (*cdn.onenote.net) cannot be expressed and is left out."""
        data = [{"id": 51, "serviceArea": "Common", "urls": ["*cdn.onenote.net", "www.onedrive.com"],
                 "category": "Default", "required": True}]
        conversion = convert(data, "Common", ["Default"])
        self.assertEqual(conversion.hosts, ("www.onedrive.com",))
        self.assertEqual(conversion.skipped[0].url, "*cdn.onenote.net")
        self.assertIn("'*' is only allowed as the whole first label", conversion.skipped[0].reason)

    def test_bad_shapes(self) -> None:
        """Anything not shaped like Microsoft's data is refused with what was expected and where."""
        good = {"id": 11, "serviceArea": "Skype", "category": "Optimize", "ips": ["52.112.0.0/14"]}
        cases = [
            ({"value": []}, "expected a JSON array of endpoint sets"),
            ("text", "expected a JSON array of endpoint sets (as served by https://endpoints.office.com"),
            ([good, 3], "item 1: expected an endpoint set (a JSON object), got a number"),
            ([{**good, "serviceArea": None}], "item 0 (id 11): 'serviceArea' must be a string, got null"),
            ([{"id": 11, "category": "Allow"}], "item 0 (id 11): the endpoint set has no 'serviceArea'"),
            ([{**good, "ips": "52.112.0.0/14"}], "item 0 (id 11): 'ips' must be an array of strings, got a string"),
            ([{**good, "urls": ["a.test", 7]}], "'urls' must be an array of strings, but it holds a number"),
            ([{**good, "ips": ["52.112.0.0/33"]}], "item 0 (id 11): 'ips' holds '52.112.0.0/33', which is not an IP network"),
            ([], "no endpoint set has serviceArea 'Skype' and category Optimize or Allow (service areas present: none)"),
            ([{**good, "serviceArea": "Exchange"}], "(service areas present: Exchange)"),
        ]
        for data, expected in cases:
            error = self.assertRaises(EndpointsFormatError, convert, data)
            self.assertIn(expected, str(error), msg=repr(data))


class ImportCommandTests(SynchronousTestCase):
    """
    C{txgate o365 import FILE.json [--service-area A] [--category C] [--output PATH]}.
    """

    def run_txgate(self, *argv: str) -> tuple[int, str, str]:
        out, err = StringIO(), StringIO()
        status = main(list(argv), out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def write(self, content: str | bytes, name: str = "endpoints.json") -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    def test_stdout(self) -> None:
        """Without --output the list goes to standard output, dated today."""
        status, out, err = self.run_txgate("o365", "import", SAMPLE)
        self.assertEqual((status, err), (0, ""))
        header, body = out.split("\n\n", 1)
        self.assertEqual(body.splitlines(), SKYPE_ENTRIES)
        generated = re.search(r"^# Generated from o365-sample\.json by txgate o365 import on (\S+)\.$", header, re.M)
        assert generated is not None, header
        date = datetime.date.fromisoformat(generated.group(1))
        self.assertLessEqual(abs((datetime.date.today() - date).days), 1)

    def test_output(self) -> None:
        """--output writes the file (replacing any old one) and says how many entries it holds."""
        target = self.write("old contents\n", "office365.skype.txt")
        status, out, err = self.run_txgate("o365", "import", SAMPLE, "--output", target)
        self.assertEqual((status, out, err), (0, f"{target}: 5 host, 2 IPv4 and 7 IPv6 entries\n", ""))
        with open(target, encoding="utf-8") as f:
            self.assertEqual(f.read().split("\n\n", 1)[1].splitlines(), SKYPE_ENTRIES)
        self.assertEqual(os.listdir(os.path.dirname(target)), ["office365.skype.txt"])
        categories = load_categories([target], "forward.toml")
        self.assertEqual(categories.lookup("lync.com", None), {"office365.skype"})

    def test_service_area_and_category(self) -> None:
        """--service-area and repeated --category choose other sets; left-out URLs are warned about."""
        status, out, err = self.run_txgate(
            "o365", "import", SAMPLE, "--service-area", "Exchange", "--category", "Default", "--category", "Allow"
        )
        self.assertEqual(status, 0)
        self.assertEqual(out.split("\n\n", 1)[1], "*.outlook.com\n")
        self.assertEqual(
            err,
            f"{SAMPLE}: left out 'autodiscover.<tenant>.onmicrosoft.com' (id 8): a per-tenant placeholder;"
            " list your own names by hand\n",
        )

    def test_not_json(self) -> None:
        """A file that is not JSON: exit 1, the file and position named, no traceback."""
        path = self.write('[{"id": 1,\n  "serviceArea": }]')
        status, out, err = self.run_txgate("o365", "import", path)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            f"{path}:2:18: not valid JSON: Expecting value; expected Microsoft's endpoints JSON"
            " (https://endpoints.office.com/endpoints/worldwide)\n",
        )

    def test_not_utf8(self) -> None:
        """Undecodable bytes are reported, not raised."""
        path = self.write(b'["\xff"]')
        status, out, err = self.run_txgate("o365", "import", path)
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith(f"{path}: not valid JSON: "), err)
        self.assertNotIn("Traceback", err)

    def test_too_deep(self) -> None:
        """Absurdly nested JSON is an error, not a crash."""
        path = self.write("[" * 100000 + "]" * 100000)
        status, out, err = self.run_txgate("o365", "import", path)
        self.assertEqual(status, 1)
        self.assertTrue(err.startswith(f"{path}: "), err)

    def test_wrong_shape(self) -> None:
        """Valid JSON of the wrong shape: exit 1 naming the file and what was expected."""
        path = self.write('{"endpoints": []}')
        status, out, err = self.run_txgate("o365", "import", path)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            f"{path}: expected a JSON array of endpoint sets (as served by"
            " https://endpoints.office.com/endpoints/worldwide?clientrequestid=GUID), got an object\n",
        )

    def test_no_match(self) -> None:
        """An unknown service area: exit 1, listing the areas the file has."""
        status, out, err = self.run_txgate("o365", "import", SAMPLE, "--service-area", "Skyp")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no endpoint set has serviceArea 'Skyp'", err)
        self.assertIn("(service areas present: Exchange, SharePoint, Skype)", err)

    def test_missing_file(self) -> None:
        """A file that cannot be read: exit 1 with the reason."""
        path = os.path.abspath(self.mktemp())
        status, out, err = self.run_txgate("o365", "import", path)
        self.assertEqual((status, out, err), (1, "", f"{path}: cannot read: No such file or directory\n"))

    def test_unwritable_output(self) -> None:
        """An output that cannot be written: exit 1, and no temporary file is left behind."""
        directory = os.path.abspath(self.mktemp())
        target = os.path.join(directory, "missing", "list.txt")
        status, out, err = self.run_txgate("o365", "import", SAMPLE, "--output", target)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"{target}: cannot write: No such file or directory\n")
