import unittest

from hearth_bench import peers
from hearth_bench.client import frames, histogram, histogram_delta, make_tar, parse_prometheus


class BundleConfigTest(unittest.TestCase):
    def test_runs_argv_without_terminal_limits_or_cgroup_path(self):
        config = {"process": {"args": ["sh"], "terminal": True, "env": ["TERM=xterm", "HOME=/root"]},
                  "linux": {"resources": {"memory": {"limit": 1}}, "cgroupsPath": "/x",
                            "namespaces": [{"type": "pid"}]}}
        c = peers.bundle_config(config, ["python3", "-c", "pass"])
        self.assertEqual(c["process"]["args"], ["python3", "-c", "pass"])
        self.assertFalse(c["process"]["terminal"])
        self.assertNotIn("resources", c["linux"])
        self.assertNotIn("cgroupsPath", c["linux"])
        self.assertIn("HOME=/root", c["process"]["env"])
        self.assertTrue(any(e.startswith("PATH=") for e in c["process"]["env"]))
        self.assertFalse(any(e.startswith("TERM=") for e in c["process"]["env"]))
        self.assertEqual({n["type"] for n in c["linux"]["namespaces"]},
                         {"pid", "network", "ipc", "uts", "mount", "cgroup"})
        self.assertEqual(config["process"]["args"], ["sh"], "the input is not modified")

    def test_crun_runs_in_a_private_mount_namespace_without_cgroups(self):
        argv = peers.crun_argv("/b", "/s", "id1")
        self.assertEqual(argv[:2], ["unshare", "--mount"])
        self.assertIn("--cgroup-manager=disabled", argv)
        self.assertEqual(argv[-3:], ["--bundle", "/b", "id1"])

    def test_bwrap_binds_the_rootfs_read_only(self):
        argv = peers.bwrap_argv("/r", ["python3", "-c", "x"])
        i = argv.index("--ro-bind")
        self.assertEqual(argv[i + 1:i + 3], ["/r", "/"])
        self.assertEqual(argv[-3:], ["python3", "-c", "x"])


class ClientPiecesTest(unittest.TestCase):
    def test_prometheus_histogram_delta(self):
        before = parse_prometheus('hearth_warm_dispatch_seconds_bucket{le="0.0001"} 1\n'
                                  'hearth_warm_dispatch_seconds_bucket{le="+Inf"} 2\n')
        after = parse_prometheus('# TYPE x histogram\n'
                                 'hearth_warm_dispatch_seconds_bucket{le="0.0001"} 5\n'
                                 'hearth_warm_dispatch_seconds_bucket{le="+Inf"} 9\n'
                                 'hearth_tasks_total{outcome="succeeded"} 9\n')
        d = histogram_delta(histogram(after, "hearth_warm_dispatch_seconds"),
                            histogram(before, "hearth_warm_dispatch_seconds"))
        self.assertEqual(d, [(0.0001, 4.0), (float("inf"), 7.0)])
        self.assertEqual(after["hearth_tasks_total"], [({"outcome": "succeeded"}, 9.0)])

    def test_sandbox_frames(self):
        data = b"\x01\x00\x00\x00\x02hi" + b"\x03\x00\x00\x00\x02{}"
        self.assertEqual(list(frames(data)), [(1, b"hi"), (3, b"{}")])

    def test_tar_is_deterministic(self):
        self.assertEqual(make_tar({"a.py": b"x"}), make_tar({"a.py": b"x"}))


if __name__ == "__main__":
    unittest.main()
