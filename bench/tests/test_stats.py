import math
import unittest

from hearth_bench.stats import format_bytes, format_seconds, histogram_quantile, percentile, ratio, summarize


class PercentileTest(unittest.TestCase):
    def test_median_of_odd_and_even_counts(self):
        self.assertEqual(percentile([3, 1, 2], 50), 2)
        self.assertEqual(percentile([4, 1, 3, 2], 50), 2.5)

    def test_interpolates_like_numpy(self):
        # numpy.percentile(range(1, 101), 99) == 99.01
        self.assertAlmostEqual(percentile(list(range(1, 101)), 99), 99.01)
        self.assertEqual(percentile([5.0], 99), 5.0)

    def test_extremes(self):
        self.assertEqual(percentile([9, 1, 5], 0), 1)
        self.assertEqual(percentile([9, 1, 5], 100), 9)

    def test_refuses_empty_and_out_of_range(self):
        with self.assertRaises(ValueError):
            percentile([], 50)
        with self.assertRaises(ValueError):
            percentile([1], 101)


class SummarizeTest(unittest.TestCase):
    def test_fields(self):
        s = summarize([0.004, 0.001, 0.002, 0.003])
        self.assertEqual(s["n"], 4)
        self.assertEqual(s["min"], 0.001)
        self.assertEqual(s["max"], 0.004)
        self.assertAlmostEqual(s["median"], 0.0025)
        self.assertAlmostEqual(s["mean"], 0.0025)
        self.assertLessEqual(s["median"], s["p99"])
        self.assertLessEqual(s["p99"], s["max"])

    def test_empty(self):
        self.assertEqual(summarize([]), {"n": 0})

    def test_ratio(self):
        self.assertAlmostEqual(ratio(summarize([2.0]), summarize([4.0])), 0.5)
        self.assertIsNone(ratio(summarize([]), summarize([4.0])))
        self.assertIsNone(ratio(summarize([1.0]), None))


class HistogramQuantileTest(unittest.TestCase):
    def test_interpolates_within_bucket(self):
        buckets = [(0.001, 0), (0.002, 10), (0.004, 20), (math.inf, 20)]
        self.assertAlmostEqual(histogram_quantile(0.5, buckets), 0.002)
        self.assertAlmostEqual(histogram_quantile(0.25, buckets), 0.0015)
        self.assertAlmostEqual(histogram_quantile(0.75, buckets), 0.003)

    def test_first_bucket_starts_at_zero(self):
        self.assertAlmostEqual(histogram_quantile(0.5, [(0.0001, 10), (math.inf, 10)]), 0.00005)

    def test_inf_bucket_gives_highest_finite_bound(self):
        self.assertEqual(histogram_quantile(0.99, [(0.001, 1), (math.inf, 100)]), 0.001)

    def test_empty(self):
        self.assertIsNone(histogram_quantile(0.5, []))
        self.assertIsNone(histogram_quantile(0.5, [(0.001, 0), (math.inf, 0)]))


class FormatTest(unittest.TestCase):
    def test_seconds_pick_a_unit(self):
        self.assertEqual(format_seconds(87e-6), "87 µs")
        self.assertEqual(format_seconds(1.25e-3), "1.25 ms")
        self.assertEqual(format_seconds(0.3124), "312.4 ms")
        self.assertEqual(format_seconds(2.414), "2.41 s")
        self.assertEqual(format_seconds(None), "–")

    def test_bytes(self):
        self.assertEqual(format_bytes(512), "512 B")
        self.assertEqual(format_bytes(37 << 20), "37.0 MiB")
        self.assertEqual(format_bytes(None), "–")


if __name__ == "__main__":
    unittest.main()
