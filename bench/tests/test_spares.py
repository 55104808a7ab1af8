import unittest

from hearth_bench import cli, goals, report, runner, spares
from hearth_bench.stats import summarize

IMAGE = runner.IMAGE


def status(ready=1, image=IMAGE, network="none", enabled=True):
    return {"enabled": enabled, "perKey": 1, "adopted": 0,
            "keys": [{"image": image, "network": network, "ready": ready, "starting": 1 - ready,
                      "replicas": ["spare-1"] if ready else []}]}


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = 0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.sleeps += 1
        self.now += s


class ReadyTest(unittest.TestCase):
    def test_ready_needs_the_image_and_one_ready_spare(self):
        self.assertTrue(spares.ready(status(1), IMAGE))
        self.assertFalse(spares.ready(status(0), IMAGE))
        self.assertFalse(spares.ready(status(1, image="other:1"), IMAGE))
        self.assertFalse(spares.ready(status(1, enabled=False), IMAGE))
        self.assertFalse(spares.ready({"enabled": True, "keys": []}, IMAGE))
        self.assertFalse(spares.ready(None, IMAGE))

    def test_preload_is_matched_exactly(self):
        pre = status(1)
        pre["keys"][0]["preload"] = ["numpy"]
        self.assertFalse(spares.ready(pre, IMAGE), "a preloaded spare is not a plain environment's")
        self.assertTrue(spares.ready(pre, IMAGE, preload=["numpy"]))
        self.assertFalse(spares.ready(status(1), IMAGE, preload=["numpy"]))
        self.assertFalse(spares.ready(pre, IMAGE, preload=["numpy", "pandas"]))

    def test_preload_goal(self):
        def timing(key, median):
            return {"key": key, "stats": {"n": 3, "median": median}}
        res = {"timings": [timing("hearth-spare-preload-numpy", 0.004), timing("bwrap-numpy", 0.100)]}
        g = [x for x in goals.evaluate(res) if "preload" in x["goal"]]
        self.assertEqual(len(g), 1)
        self.assertTrue(g[0]["met"])
        self.assertTrue(g[0]["measured"].startswith("0.040"), g[0])
        res["timings"][0]["stats"]["median"] = 0.02
        self.assertFalse([x for x in goals.evaluate(res) if "preload" in x["goal"]][0]["met"])

    def test_network_is_matched_only_when_given(self):
        self.assertTrue(spares.ready(status(1, network="host"), IMAGE))
        self.assertFalse(spares.ready(status(1, network="host"), IMAGE, network="none"))
        self.assertTrue(spares.ready(status(1), IMAGE, network="none"))

    def test_any_of_several_keys(self):
        s = status(0)
        s["keys"].append({"image": IMAGE, "network": "host", "ready": 1, "starting": 0})
        self.assertTrue(spares.ready(s, IMAGE))


class WaitTest(unittest.TestCase):
    def test_returns_once_the_refill_is_ready(self):
        answers = iter([status(0), status(0), status(1)])
        clock = FakeClock()
        self.assertTrue(spares.wait_ready(lambda: next(answers), IMAGE, timeout=10, poll=0.01,
                                          clock=clock, sleep=clock.sleep))
        self.assertEqual(clock.sleeps, 2)

    def test_times_out_instead_of_hanging(self):
        clock = FakeClock()
        calls = []
        ok = spares.wait_ready(lambda: calls.append(1) or status(0), IMAGE, timeout=10, poll=0.5,
                               clock=clock, sleep=clock.sleep)
        self.assertFalse(ok)
        self.assertGreaterEqual(clock.now, 10)
        self.assertLessEqual(clock.now, 10.5)
        self.assertEqual(len(calls), 21)

    def test_asks_once_with_no_time(self):
        clock = FakeClock()
        self.assertTrue(spares.wait_ready(lambda: status(1), IMAGE, timeout=0, clock=clock, sleep=clock.sleep))
        self.assertFalse(spares.wait_ready(lambda: status(0), IMAGE, timeout=0, clock=clock, sleep=clock.sleep))
        self.assertEqual(clock.sleeps, 0)

    def test_status_errors_propagate(self):
        def broken():
            raise RuntimeError("GET /v1/spares: HTTP 404")
        with self.assertRaises(RuntimeError):
            spares.wait_ready(broken, IMAGE, timeout=1)


class AdoptedTest(unittest.TestCase):
    def test_spare_adopt_phase_alone_means_adopted(self):
        self.assertTrue(spares.adopted({"coldStart": True, "coldPhases": {"spare_adopt": 812}}))
        self.assertFalse(spares.adopted({"coldStart": True, "coldPhases": {"clone": 1000, "worker_ready": 14000}}))
        self.assertFalse(spares.adopted({"coldStart": True, "coldPhases": None}))
        self.assertFalse(spares.adopted({"coldStart": True}))


class NotesTest(unittest.TestCase):
    def test_nothing_without_a_spare_daemon(self):
        self.assertEqual(spares.notes({}), [])

    def test_explains_spares_and_counts_every_outcome(self):
        n = spares.notes({"hearth-spare": {"adopted": 18, "not_adopted": 2, "skipped": 1, "late_refill": 1},
                          "hearth-spare-numpy": {"adopted": 12, "not_adopted": 0, "skipped": 0, "late_refill": 0}})
        self.assertEqual(len(n), 3)
        explain = n[0]
        for words in ("interpreter and worker are already started", "in no environment", "limits",
                      "in the background", "never overlaps another measurement", "`--spares 0`",
                      "has not seen yet"):
            self.assertIn(words, explain)
        self.assertIn("trivial task: 18 runs adopted a spare", n[1])
        self.assertIn("2 runs built a replica from scratch instead", n[1])
        self.assertIn("left out of the row", n[1])
        self.assertIn("1 run skipped: no ready spare within 10 s", n[1])
        self.assertIn("after 1 run the refill was not ready", n[1])
        self.assertIn("`import numpy`: 12 runs adopted a spare", n[2])
        self.assertIn("none built its replica from scratch", n[2])
        self.assertNotIn("skipped", n[2])


def results(with_spare=True, numpy=True):
    timings = [
        {"key": "warm-api", "group": "warm", "label": "raw API", "stats": summarize([200e-6, 250e-6, 300e-6])},
        {"key": "hearth-cold", "group": "cold", "label": runner.SCRATCH_LABEL,
         "stats": summarize([0.04, 0.05, 0.06])},
        {"key": "bwrap", "group": "cold", "label": "bwrap", "stats": summarize([0.02, 0.02])},
        {"key": "crun", "group": "cold", "label": "crun", "stats": summarize([0.025])},
    ]
    if with_spare:
        timings.insert(1, {"key": "hearth-spare", "group": "cold", "label": runner.SPARE_LABEL,
                           "stats": summarize([0.015, 0.016, 0.017]), "samples": [0.015, 0.016, 0.017]})
    if numpy:
        timings += [
            {"key": "warm-numpy", "group": "numpy", "label": "warm numpy", "stats": summarize([500e-6])},
            {"key": "hearth-cold-numpy", "group": "numpy", "label": runner.SCRATCH_LABEL,
             "stats": summarize([0.1])},
            {"key": "bwrap-numpy", "group": "numpy", "label": "bwrap", "stats": summarize([0.08])},
        ]
        if with_spare:
            timings.insert(-2, {"key": "hearth-spare-numpy", "group": "numpy", "label": runner.SPARE_LABEL,
                                "stats": summarize([0.04])})
    return {"mode": "quick", "date": "2026-01-01 00:00 UTC", "machine": {}, "timings": timings}


class GoalSelectionTest(unittest.TestCase):
    def test_goal_line_is_the_adopted_spare_with_from_scratch_beside_it(self):
        g = goals.evaluate(results())
        names = [x["goal"] for x in g]
        by = {x["goal"]: x for x in g}
        main = by["cold first task / bwrap, same task and rootfs"]
        self.assertEqual(main["measured"], "0.80 (16.0 ms vs 20.0 ms, spare adopted)")
        self.assertTrue(main["met"])
        info = by["(cold first task / bwrap, replica built from scratch (spares off))"]
        self.assertEqual(info["measured"], "2.50 (50.0 ms vs 20.0 ms)")
        self.assertFalse(info["met"])
        self.assertEqual(names.index("(cold first task / bwrap, replica built from scratch (spares off))"),
                         names.index("cold first task / bwrap, same task and rootfs") + 1)
        crun = by["cold first task / crun, same task and rootfs"]
        self.assertIn("0.64", crun["measured"])
        self.assertTrue(crun["met"])  # 16 / 25 ms ≤ 0.8
        self.assertFalse(by["(cold first task / crun, replica built from scratch (spares off))"]["met"])

    def test_cold_over_warm_stays_from_scratch_and_says_so(self):
        by = {x["goal"]: x for x in goals.evaluate(results())}
        self.assertEqual(by["cold / warm, trivial task, cold built from scratch (spares off)"]["measured"], "200×")
        self.assertEqual(by["cold / warm, numpy import, cold built from scratch (spares off)"]["measured"], "200×")

    def test_without_a_spare_figure_the_from_scratch_one_is_the_goal_line(self):
        g = goals.evaluate(results(with_spare=False))
        by = {x["goal"]: x for x in g}
        main = by["cold first task / bwrap, same task and rootfs"]
        self.assertEqual(main["measured"], "2.50 (50.0 ms vs 20.0 ms, replica built from scratch)")
        self.assertFalse(any(x["goal"].startswith("(cold first task") for x in g))
        self.assertIn("cold / warm, trivial task", by)
        self.assertIn("cold / warm, numpy import", by)

    def test_spare_without_from_scratch_has_no_informational_line(self):
        r = results()
        r["timings"] = [t for t in r["timings"] if t["key"] != "hearth-cold"]
        g = goals.evaluate(r)
        self.assertFalse(any(x["goal"].startswith("(cold first task") for x in g))
        by = {x["goal"]: x for x in g}
        self.assertIsNone(by["cold / warm, trivial task, cold built from scratch (spares off)"]["met"])

    def test_no_peer_means_not_measured(self):
        out = goals.cold_vs_peer(summarize([0.05]), summarize([0.01]), None, "bwrap", 1.0)
        self.assertEqual([x["met"] for x in out], [None, None])


class ReportRowsTest(unittest.TestCase):
    def test_cold_and_numpy_tables_have_the_spare_row_with_its_ratio(self):
        r = results()
        r["goals"] = goals.evaluate(r)
        md = report.render(r, None)
        self.assertIn(f"| {runner.SPARE_LABEL} | 16.0 ms | ", md)
        self.assertIn("| 3 | 0.80× |", md)            # 16 ms / 20 ms bwrap
        self.assertIn(f"| {runner.SCRATCH_LABEL} | 50.0 ms |", md)
        self.assertIn("| 1 | 0.50× |", md)            # numpy: 40 ms / 80 ms bwrap
        self.assertIn("| (cold first task / bwrap, replica built from scratch (spares off)) | ≤ 1.0 |", md)

    def test_readme_block_keeps_the_spare_row(self):
        r = results()
        r["goals"] = goals.evaluate(r)
        self.assertIn(runner.SPARE_LABEL, report.readme_block(r, "x.svg"))

    def test_phase_row_from_spare_adopt(self):
        samples = {"hearth-cold:apply": [0.002], "hearth-cold:phase:clone": [0.001],
                   "hearth-cold:phase:worker_ready": [0.014], "hearth-cold:run": [0.007],
                   "hearth-spare:phase:spare_adopt": [0.0008, 0.0009, 0.001]}
        rows = runner.phase_rows(samples, [], {})
        labels = [r["label"] for r in rows]
        self.assertIn("spare adoption: limits written, env sent, packages checked", labels)
        row = rows[labels.index("spare adoption: limits written, env sent, packages checked")]
        self.assertEqual(row["stats"]["n"], 3)
        self.assertAlmostEqual(row["stats"]["median"], 0.0009)
        self.assertLess(labels.index("replica: clone3 with the namespaces"), labels.index(row["label"]))
        self.assertNotIn("spare adoption: limits written, env sent, packages checked",
                         [r["label"] for r in runner.phase_rows({"hearth-cold:run": [0.007]}, [], {})])

    def test_chart_has_both_hearth_cold_bars(self):
        r = results()
        bars = dict(cli.chart_groups(r))["trivial task: `json.dumps(1 + 1)`"]
        self.assertEqual([b["label"] for b in bars][:3], ["Hearth warm, API", "Hearth cold, spare adopted",
                                                         "Hearth cold, from scratch"])


class FakeSpareClient:
    """The spares-on daemon: a spare is adopted when one is ready (unless
    adopt is False), and the refill is ready after refill_polls status calls."""

    def __init__(self, ready=1, adopt=True, refill_polls=2, refills=True):
        self.ready = ready
        self.adopt = adopt
        self.refill_polls = refill_polls
        self.refills = refills
        self.polls_left = 0
        self.applied = []
        self.deleted = []

    def call(self, method, path):
        assert (method, path) == ("GET", "/v1/spares")
        if not self.ready and self.refills and self.polls_left == 0:
            self.ready = 1
        self.polls_left = max(0, self.polls_left - 1)
        return status(self.ready)

    def apply(self, yaml_text):
        self.applied.append(yaml_text)

    def task(self, env, module, function, bundle):
        if self.ready and self.adopt:
            self.ready, self.polls_left = 0, self.refill_polls
            return {"state": "succeeded", "coldStart": True, "runMicros": 7000, "coldPhases": {"spare_adopt": 900}}
        if self.ready == 0:
            self.polls_left = self.refill_polls
        return {"state": "succeeded", "coldStart": True, "runMicros": 7000,
                "coldPhases": {"clone": 1100, "worker_ready": 14000}}

    def delete_env(self, name):
        self.deleted.append(name)


def make_runner(client, tmp="/nonexistent"):
    r = runner.Runner("/nonexistent/bin", "/nonexistent/repo", tmp, quick=True)
    r.spare_client = client
    r.spare_wait = 0.05
    return r


class HearthSpareRunTest(unittest.TestCase):
    def test_adopted_run_is_recorded_with_its_phase(self):
        c = FakeSpareClient()
        r = make_runner(c)
        r.hearth_spare(IMAGE, "benchmod", "trivial", 1, "")
        self.assertEqual(len(r.samples["hearth-spare"]), 1)
        self.assertEqual(r.samples["hearth-spare:phase:spare_adopt"], [0.0009])
        self.assertEqual(r.spare_runs["hearth-spare"].as_dict(),
                         {"adopted": 1, "not_adopted": 0, "skipped": 0, "late_refill": 0})
        self.assertEqual(c.ready, 1, "waited for the refill before returning")
        self.assertEqual(c.deleted, ["bench-spare-1"])

    def test_run_that_built_from_scratch_is_excluded_and_counted(self):
        c = FakeSpareClient(adopt=False)
        r = make_runner(c)
        r.hearth_spare(IMAGE, "benchmod", "trivial", 1, "-numpy")
        self.assertNotIn("hearth-spare-numpy", r.samples)
        self.assertFalse([k for k in r.samples if k.startswith("hearth-spare")])
        self.assertEqual(r.spare_runs["hearth-spare-numpy"].not_adopted, 1)
        self.assertEqual(r.spare_runs["hearth-spare-numpy"].adopted, 0)

    def test_warm_up_does_not_wait_first_and_records_nothing(self):
        c = FakeSpareClient(ready=0)
        r = make_runner(c)
        r.recording = False
        r.hearth_spare(IMAGE, "benchmod", "trivial", 0, "")
        self.assertEqual(len(c.applied), 1, "the warm-up round teaches the daemon the key")
        self.assertEqual(r.samples, {})
        self.assertEqual(r.spare_runs["hearth-spare"].as_dict(),
                         {"adopted": 0, "not_adopted": 0, "skipped": 0, "late_refill": 0})
        self.assertEqual(c.ready, 1, "waited for the first spare after the warm-up")

    def test_no_ready_spare_skips_the_run_then_gives_up_waiting(self):
        c = FakeSpareClient(ready=0, refills=False)
        r = make_runner(c)
        for i in range(1, 6):
            r.hearth_spare(IMAGE, "benchmod", "trivial", i, "")
        self.assertEqual(c.applied, [])
        self.assertEqual(r.spare_runs["hearth-spare"].skipped, 5)
        self.assertEqual(r.spare_timeouts, spares.GIVE_UP_AFTER)
        self.assertNotIn("hearth-spare", r.samples)

    def test_late_refill_is_counted_but_the_run_kept(self):
        c = FakeSpareClient(refill_polls=10 ** 9)
        r = make_runner(c)
        r.hearth_spare(IMAGE, "benchmod", "trivial", 1, "")
        self.assertEqual(r.spare_runs["hearth-spare"].as_dict(),
                         {"adopted": 1, "not_adopted": 0, "skipped": 0, "late_refill": 1})
        self.assertEqual(len(r.samples["hearth-spare"]), 1)

    def test_from_scratch_row_refuses_an_adopted_run(self):
        c = FakeSpareClient()
        r = make_runner(None)
        r.client = c
        with self.assertRaises(RuntimeError):
            r.hearth_cold(IMAGE, "benchmod", "trivial", 1, "")
        self.assertNotIn("hearth-cold", r.samples)
        c.ready = 0
        r.hearth_cold(IMAGE, "benchmod", "trivial", 2, "")
        self.assertEqual(len(r.samples["hearth-cold"]), 1)
        self.assertIn("hearth-cold:phase:worker_ready", r.samples)

    def test_timings_rows_and_unavailable(self):
        r = make_runner(FakeSpareClient())
        r.hearth_spare(IMAGE, "benchmod", "trivial", 1, "")
        r.unavailable["hearth-spare-numpy"] = "this hearthd build has no --spares option"
        rows = {t["key"]: t for t in r.timings()}
        self.assertEqual(rows["hearth-spare"]["label"], runner.SPARE_LABEL)
        self.assertEqual(rows["hearth-spare"]["group"], "cold")
        self.assertEqual(len(rows["hearth-spare"]["samples"]), 1)
        self.assertEqual(rows["hearth-spare-numpy"]["group"], "numpy")
        self.assertIn("--spares", rows["hearth-spare-numpy"]["unavailable"])
        keys = [t["key"] for t in r.timings()]
        self.assertNotIn("hearth-cold", keys)


if __name__ == "__main__":
    unittest.main()


class SpareDaemonTest(unittest.TestCase):
    def test_a_daemon_that_does_not_start_makes_the_rows_unavailable(self):
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            r = runner.Runner(tmp + "/no-bin", tmp, tmp, quick=True)
            r.start_spare_daemon({IMAGE: tmp + "/layout"}, have_numpy=False)
            self.assertIsNone(r.spare_client)
            self.assertIsNone(r.spare_daemon)
            self.assertIn("--spares 1 daemon", r.unavailable["hearth-spare"])
            self.assertIn("hearth-spare-numpy", r.unavailable)

    def test_second_daemon_has_its_own_root_socket_and_cgroup(self):
        from hearth_bench.daemon import Daemon
        a = Daemon("/b", "/w", "/work", extra_args=["--spares", "0"])
        b = Daemon("/b", "/w", "/work/spares", extra_args=["--spares", "1"], cgroup_suffix="-spares")
        self.assertNotEqual(a.root, b.root)
        self.assertNotEqual(a.socket, b.socket)
        self.assertEqual(b.cgroup_name, a.cgroup_name + "-spares")
        self.assertEqual(b.extra_args, ["--spares", "1"])

    def test_supports_reads_the_help(self):
        import os
        import tempfile
        from hearth_bench.daemon import Daemon
        with tempfile.TemporaryDirectory() as tmp:
            exe = os.path.join(tmp, "hearthd")
            with open(exe, "w") as f:
                f.write("#!/bin/sh\necho '  --spares <spares>  Pre-started replicas'\n")
            os.chmod(exe, 0o755)
            d = Daemon(tmp, "/w", tmp)
            self.assertTrue(d.supports("--spares"))
            self.assertFalse(d.supports("--spare-ttl"))
            self.assertFalse(Daemon(tmp + "/none", "/w", tmp).supports("--spares"))


class FloorTest(unittest.TestCase):
    def test_placement_takes_the_two_lowest_allowed_cpus(self):
        from hearth_bench import floor
        self.assertEqual(floor.placement({3, 1, 7}), (1, 3))
        self.assertIsNone(floor.placement({0}))

    def test_floor_goals_are_ratios_of_p50_and_p99(self):
        def timing(key, median, p99):
            return {"key": key, "stats": {"n": 100, "median": median, "p99": p99}}
        res = {"timings": [timing("warm-sdk", 300e-6, 900e-6), timing("warm-floor", 100e-6, 400e-6)]}
        g = {x["goal"]: x for x in goals.evaluate(res) if "floor" in x["goal"]}
        p50 = next(v for k, v in g.items() if k.endswith("p50"))
        p99 = next(v for k, v in g.items() if k.endswith("p99"))
        self.assertFalse(p50["met"])
        self.assertTrue(p50["measured"].startswith("3.00×"), p50)
        self.assertTrue(p99["met"])
        self.assertTrue(p99["measured"].startswith("2.25×"), p99)


class MemoryGoalTest(unittest.TestCase):
    def test_per_replica_overhead_goal(self):
        res = {"memory": [{"key": "overhead", "bytes": 3.2 * (1 << 20)}]}
        g = [x for x in goals.evaluate(res) if x["goal"].startswith("per-replica overhead")][0]
        self.assertTrue(g["met"])
        res["memory"][0]["bytes"] = 5 << 20
        self.assertFalse([x for x in goals.evaluate(res) if x["goal"].startswith("per-replica overhead")][0]["met"])
