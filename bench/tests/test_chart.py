import unittest
import xml.etree.ElementTree as ET

from hearth_bench import chart
from hearth_bench.stats import summarize

NS = "{http://www.w3.org/2000/svg}"


def groups():
    return [
        ("trivial", [
            {"label": "warm", "kind": "warm", "stats": summarize([100e-6, 200e-6, 300e-6])},
            {"label": "cold", "kind": "hearth", "stats": summarize([0.05, 0.06])},
            {"label": "bwrap & co", "kind": "peer", "stats": summarize([0.1])},
            {"label": "missing", "kind": "peer", "stats": {"n": 0}},
        ]),
        ("empty group", []),
    ]


class ChartTest(unittest.TestCase):
    def test_is_well_formed_svg_with_one_bar_per_measured_row(self):
        svg = chart.render(groups(), "title <x>", "sub")
        root = ET.fromstring(svg)
        self.assertEqual(root.tag, NS + "svg")
        bars = [r for r in root.iter(NS + "rect") if r.find(NS + "title") is not None]
        self.assertEqual(len(bars), 3)
        texts = [t.text for t in root.iter(NS + "text")]
        self.assertIn("title <x>", texts)
        self.assertIn("bwrap & co", texts)
        self.assertNotIn("missing", texts)
        self.assertNotIn("empty group", texts)

    def test_log_scale_orders_bars_by_median(self):
        root = ET.fromstring(chart.render(groups(), "t"))
        widths = [float(r.get("width")) for r in root.iter(NS + "rect") if r.find(NS + "title") is not None]
        self.assertEqual(widths, sorted(widths))
        # Log scale: 200 µs → 55 ms is ~2.4 decades, 55 → 100 ms ~0.26: the gaps say so.
        self.assertGreater(widths[1] - widths[0], 5 * (widths[2] - widths[1]))

    def test_ticks_are_decades_covering_the_data(self):
        ticks = chart._log_ticks(150e-6, 0.3)
        self.assertEqual(len(ticks), 5)
        self.assertAlmostEqual(ticks[0], 1e-4)
        self.assertAlmostEqual(ticks[-1], 1.0)

    def test_no_data_still_renders(self):
        ET.fromstring(chart.render([], "nothing"))


if __name__ == "__main__":
    unittest.main()
