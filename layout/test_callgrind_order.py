"""Tests of callgrind-order.py on a hand-written callgrind file: `python3 -m unittest
discover -s layout` (run by tests/run.sh)."""
import importlib.util
import os
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("callgrind_order", os.path.join(HERE, "callgrind-order.py"))
callgrind_order = importlib.util.module_from_spec(spec)
spec.loader.exec_module(callgrind_order)

# `hot` costs 500 itself and calls `callee` (whose inclusive 9000 must not count as hot's);
# `callee` is first named in a cfn= line and later referred to by id only; `rec'2` is a
# recursion level of `rec`; `memcpy` is not the binary's; `never` did not run.
SAMPLE = """version: 1
creator: callgrind-3.19.0
events: Ir
fl=(1) a.rs
fn=(1) hot
10 200
11 300
cfn=(2) callee
calls=1 20
12 9000
fn=(2)
20 9000
fn=(3) rec'2
30 40
fn=(4) rec
30 2
fn=(5) memcpy
0 100000
fn=(6) cold
40 1
"""


# A second process: shares `hot` and `cold` with SAMPLE, and runs `own` (costly) and `tiny`
# that SAMPLE's process never ran.
OTHER = """version: 1
events: Ir
fl=(1) b.rs
fn=(1) own
1 70000
fn=(2) cold
2 1
fn=(3) hot
3 5
fn=(4) tiny
4 3
"""


class OrderedNames(unittest.TestCase):
    def setUp(self):
        self.paths = []
        for text in (SAMPLE, OTHER):
            fd, path = tempfile.mkstemp(suffix=".callgrind")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self.paths.append(path)
        self.path = self.paths[0]

    def tearDown(self):
        for path in self.paths:
            os.unlink(path)

    def test_functions_are_grouped_by_the_processes_that_ran_them(self):
        defined = {"hot", "callee", "rec", "cold", "never", "own", "tiny"}
        names = callgrind_order.ordered_names(self.paths, defined)
        # Shared by both first (hot: 500 + 5); then each process's own code packed apart,
        # the costlier group (`own`, 70000) before the other (callee 9000 + rec 42).
        self.assertEqual(names, ["hot", "cold", "own", "tiny", "callee", "rec"])

    def test_hottest_first_by_self_cost_within_the_binary(self):
        defined = {"hot", "callee", "rec", "cold", "never"}
        names = callgrind_order.ordered_names([self.path], defined)
        self.assertEqual(names, ["callee", "hot", "rec", "cold"])

    def test_a_call_line_cost_is_not_the_callers(self):
        costs = callgrind_order.Counter()
        callgrind_order.self_costs(self.path, costs)
        self.assertEqual(costs["hot"], 500)
        self.assertEqual(costs["callee"], 9000)


if __name__ == "__main__":
    unittest.main()
