import unittest

from hearth_bench import goals, report
from hearth_bench.stats import summarize


def results():
    return {
        "mode": "quick", "date": "2025-01-01 00:00 UTC",
        "machine": {"cpu_model": "Test CPU", "cpus": 2, "memory_bytes": 24 << 30, "kernel": "6.18.0",
                    "os": "Debian GNU/Linux 12 (bookworm)", "cgroup_layout": "hybrid"},
        "timings": [
            {"key": "warm-sdk", "group": "warm", "label": "SDK call", "unavailable": "no SDK | yet"},
            {"key": "warm-api", "group": "warm", "label": "raw API", "stats": summarize([200e-6, 250e-6, 300e-6])},
            {"key": "warm-dispatch", "group": "warm", "label": "dispatch", "stats": summarize([80e-6, 90e-6])},
            {"key": "hearth-cold", "group": "cold", "label": "Hearth cold", "stats": summarize([0.04, 0.05, 0.06])},
            {"key": "bwrap", "group": "cold", "label": "bwrap", "stats": summarize([0.1, 0.1])},
            {"key": "crun", "group": "cold", "label": "crun", "stats": summarize([0.04])},
            {"key": "build-uncached", "group": "build", "label": "every step run", "stats": summarize([1.5, 1.7])},
            {"key": "build-cached", "group": "build", "label": "all cached", "stats": summarize([0.02])},
            {"key": "pull-hearth", "group": "pull", "label": "Hearth pull", "stats": summarize([1.5, 1.6, 1.7])},
            {"key": "pull-skopeo", "group": "pull", "label": "skopeo copy", "stats": summarize([1.0, 1.0])},
        ],
        "throughput": [{"replicas": 2, "tasks": 10000, "seconds": 1.6, "tasks_per_second": 6250.0},
                       {"replicas": 1, "tasks": 10000, "seconds": 2.5, "tasks_per_second": 4000.0}],
        "memory": [{"key": "hearthd-idle", "label": "hearthd idle", "bytes": 40 << 20}],
        "phases": [{"key": "p", "label": "spawn", "stats": summarize([0.005])}],
        "notes": ["crun ran without cgroups."],
    }


class ReportTest(unittest.TestCase):
    def test_sections_and_rows(self):
        md = report.render(results(), "bench.svg")
        self.assertIn("# Hearth benchmark (quick run, 2025-01-01 00:00 UTC)", md)
        self.assertIn("kernel 6.18.0", md)
        self.assertIn("![cold vs warm vs peers, log scale](bench.svg)", md)
        self.assertIn("| raw API | 250 µs |", md)
        self.assertIn("| Hearth cold | 50.0 ms |", md)
        self.assertIn("0.50×", md)  # Hearth cold vs bwrap
        self.assertIn("## Image pull: a three-layer image from a registry on 127.0.0.1", md)
        self.assertIn("| Hearth pull | 1.60 s |", md)
        self.assertIn("1.60×", md)  # Hearth pull vs skopeo copy
        self.assertIn("| 2 | 10000 | 1.60 | 6,250 |", md)
        self.assertIn("## Image build of a small ImageSpec", md)
        self.assertIn("| every step run | 1.60 s |", md)
        self.assertIn("| all cached | 20.0 ms |", md)
        self.assertIn("| hearthd idle | 40.0 MiB |", md)
        self.assertIn("- crun ran without cgroups.", md)

    def test_unavailable_rows_say_why_and_escape_pipes(self):
        md = report.render(results(), None)
        self.assertIn("not available: no SDK \\| yet", md)
        self.assertNotIn("![", md)

    def test_table_rows_have_as_many_cells_as_the_header(self):
        md = report.render(results())
        for block in md.split("\n\n"):
            lines = [l for l in block.splitlines() if l.startswith("|")]
            if not lines:
                continue
            width = lines[0].count(" | ")
            for l in lines[2:]:
                self.assertEqual(l.replace("\\|", "").count(" | "), width, l)


class GoalsTest(unittest.TestCase):
    def test_met_missed_and_unmeasured(self):
        g = {x["goal"]: x for x in goals.evaluate(results())}
        self.assertIsNone(g["warm round trip through the SDK, p50"]["met"])
        self.assertTrue(g["daemon dispatch, p50"]["met"])
        self.assertTrue(g["cold first task / bwrap, same task and rootfs"]["met"])
        self.assertFalse(g["cold first task / crun, same task and rootfs"]["met"])  # 1.25 > 0.8
        self.assertTrue(g["cold / warm, trivial task"]["met"])  # 50 ms / 250 µs = 200×
        self.assertIsNone(g["cold / warm, numpy import"]["met"])
        self.assertTrue(g["map form, replica_count 2"]["met"])
        self.assertFalse(g["hearthd idle RSS"]["met"])
        self.assertIn("0.50", g["cold first task / bwrap, same task and rootfs"]["measured"])

    def test_goals_table_marks(self):
        md = report.goals_table(goals.evaluate(results()))
        self.assertIn("✅ met", md)
        self.assertIn("❌ missed", md)
        self.assertIn("– not measured", md)



class ReadmeBlockTest(unittest.TestCase):
    def test_replaces_only_between_markers(self):
        text = "a\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nb\n"
        out = report.replace_block(text, "new")
        self.assertEqual(out, "a\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\nb\n")
        self.assertEqual(report.replace_block(out, "new"), out)

    def test_missing_markers(self):
        with self.assertRaises(ValueError):
            report.replace_block("no markers", "x")

    def test_block_names_machine_chart_and_goals(self):
        r = results()
        r["goals"] = goals.evaluate(r)
        block = report.readme_block(r, "docs/bench/latest.svg")
        self.assertIn("kernel 6.18.0", block)
        self.assertIn("2025-01-01", block)
        self.assertIn("(docs/bench/latest.svg)", block)
        self.assertIn("hearthd idle RSS", block)
        self.assertIn("| Hearth cold |", block)


if __name__ == "__main__":
    unittest.main()
