"""Tests of the rdna1shim Python package: the `rdna1shim` command (run, path, doctor, probe,
jupyter-kernel), `python -m rdna1shim`, and `import rdna1shim` activating the shim in a
process started without LD_PRELOAD -- all against the test doubles.

Driven by shim-tests/tests/python_package.rs, in one of two modes:
* source (default): the package of this checkout (PYTHONPATH), the command run as
  `python -m rdna1shim`, the library named by RDNA1SHIM_LIBRARY, the probe's child
  program named by RDNA1SHIM_PROBE_CHILD;
* installed (SHIM_TESTS_INSTALLED=1): run by the Python of a virtual environment where
  `pip install .` put the package; the command is the `rdna1shim` console script, and the
  package, its library and its probe child program must come from that environment.
SHIM_TESTS_BIN names the directory of the compiled doubles; SHIM_TESTS_REAL_HIP=1 says
sample_conv was built.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

BIN = os.environ["SHIM_TESTS_BIN"]
INSTALLED = os.environ.get("SHIM_TESTS_INSTALLED") == "1"
REAL_HIP = os.environ.get("SHIM_TESTS_REAL_HIP") == "1"
CRASH_MARKER = "Memory access fault by GPU node-1"
GPU_RAN_MARKER = "ran on the GPU"
CASE = "2d_cnn_3x3_p1_f32"
TIMEOUT = 300


def cli():
    """How to invoke the command under test."""
    if INSTALLED:
        script = shutil.which("rdna1shim")
        assert script, "the rdna1shim console script is not on PATH"
        return [script]
    return [sys.executable, "-m", "rdna1shim"]


def clean_env(**extra):
    """This environment without the shim's, the doubles' and the preload variables
    (RDNA1SHIM_LIBRARY and RDNA1SHIM_PROBE_CHILD, which select the library and the probe
    child program under test, are kept)."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("RDNA1SHIM_", "FAKE_HIP_", "FAKE_MIOPEN_")) or k == "LD_PRELOAD")
           or k in ("RDNA1SHIM_LIBRARY", "RDNA1SHIM_PROBE_CHILD")}
    env.update(extra)
    return env


def run(argv, env=None, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                          env=env if env is not None else clean_env(), **kw)


def describe(r):
    return f"exit {r.returncode}\n--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}"


def library():
    r = run(cli() + ["path"])
    assert r.returncode == 0, describe(r)
    return r.stdout.strip()


def package_dir():
    """The folder of the rdna1shim package under test."""
    return os.path.dirname(importlib.util.find_spec("rdna1shim").origin)


def probe_child():
    """The probe child program the package under test should run: the one inside the
    installed package, or the one RDNA1SHIM_PROBE_CHILD names for the checkout."""
    if INSTALLED:
        return os.path.join(package_dir(), "rdna1shim-probe")
    return os.path.abspath(os.environ["RDNA1SHIM_PROBE_CHILD"])


def json_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def harness_summary(stdout):
    m = re.search(r"^(\d+) passed, (\d+) failed$", stdout, re.M)
    return (int(m.group(1)), int(m.group(2))) if m else None


class PathCommand(unittest.TestCase):
    def test_prints_the_library_that_exists(self):
        lib = library()
        self.assertTrue(os.path.isfile(lib), lib)
        self.assertEqual(os.path.basename(lib), "librdna1shim.so")
        if INSTALLED:
            package = package_dir()
            self.assertEqual(os.path.dirname(lib), package, "the library is not the packaged one")
            self.assertTrue(package.startswith(sys.prefix), f"{package} is not in {sys.prefix}")
        else:
            self.assertEqual(os.path.realpath(lib), os.path.realpath(os.environ["RDNA1SHIM_LIBRARY"]))

    def test_python_dash_m_is_the_same_command(self):
        r = run([sys.executable, "-m", "rdna1shim", "path"])
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertEqual(r.stdout.strip(), library())

    def test_a_missing_library_is_reported(self):
        r = run(cli() + ["path"], env=clean_env(RDNA1SHIM_LIBRARY="/nonexistent/librdna1shim.so"))
        self.assertEqual(r.returncode, 1, describe(r))
        self.assertIn("/nonexistent/librdna1shim.so does not exist", r.stderr)
        self.assertIn("RDNA1SHIM_LIBRARY", r.stderr)

    def test_usage(self):
        r = run(cli() + ["--help"])
        self.assertEqual(r.returncode, 0, describe(r))
        for word in ("run", "path", "doctor", "probe", "jupyter-kernel"):
            self.assertIn(word, r.stdout)
        r = run(cli() + ["frobnicate"])
        self.assertEqual(r.returncode, 2, describe(r))
        self.assertIn("unknown command", r.stderr)


class RunCommand(unittest.TestCase):
    def test_the_harness_reaches_the_shim(self):
        harness = os.path.join(BIN, "harness_direct")
        args = [harness, "--mode", "default", "--case", CASE]
        r = run(cli() + ["run"] + args, env=clean_env(RDNA1SHIM_LOG="debug"))
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertNotIn(CRASH_MARKER, r.stderr)
        self.assertNotIn(GPU_RAN_MARKER, r.stderr)
        passed, failed = harness_summary(r.stdout)
        self.assertTrue(passed >= 3 and failed == 0, describe(r))
        self.assertIn("rdna1shim: summary at exit", r.stderr)
        # The control: without the launcher the same run dies in MIOpen's kernel.
        r = run(args)
        self.assertEqual(r.returncode, -signal.SIGABRT, describe(r))
        self.assertIn(CRASH_MARKER, r.stderr)

    @unittest.skipUnless(REAL_HIP, "sample_conv needs HIP's real header (libamdhip64-dev)")
    def test_the_sample_client_reaches_the_shim(self):
        r = run(cli() + ["run", os.path.join(BIN, "sample_conv")])
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertIn("PASSED", r.stdout)
        self.assertNotIn(CRASH_MARKER, r.stderr)

    def test_arguments_pass_through_verbatim(self):
        args = ["a b", "--", "-h", "--help", "", "$HOME", "'q'", "ü", "run"]
        r = run(cli() + ["run", sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"] + args)
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertEqual(json.loads(r.stdout), args)
        r = run(cli() + ["run", "--", "sh", "-c", 'echo "$0:$1"', "zero", "--"])
        self.assertEqual(r.stdout.strip(), "zero:--", describe(r))

    def test_exit_status_passes_through(self):
        for code in (0, 1, 7, 255):
            r = run(cli() + ["run", "sh", "-c", f"exit {code}"])
            self.assertEqual(r.returncode, code, describe(r))

    def test_death_by_a_signal_passes_through(self):
        r = run(cli() + ["run", "sh", "-c", "kill -USR1 $$"])
        self.assertEqual(r.returncode, -signal.SIGUSR1, describe(r))

    def test_sigterm_and_sigint_reach_the_program(self):
        code = ("import signal, sys, time\n"
                "def handler(sig, frame):\n"
                "    print('got', sig, flush=True)\n"
                "    sys.exit(3)\n"
                "signal.signal(signal.SIGTERM, handler)\n"
                "signal.signal(signal.SIGINT, handler)\n"
                "print('ready', flush=True)\n"
                "time.sleep(30)\n")
        for sig in (signal.SIGTERM, signal.SIGINT):
            p = subprocess.Popen(cli() + ["run", sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=clean_env())
            try:
                self.assertEqual(p.stdout.readline().strip(), "ready")
                p.send_signal(sig)  # to the launcher's process id
                out, err = p.communicate(timeout=25)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.assertEqual(p.returncode, 3, f"{sig!r}: {out} {err}")
            self.assertEqual(out.strip(), f"got {int(sig)}")

    def test_the_program_starts_with_sigpipe_at_its_default(self):
        # Python ignores SIGPIPE; the launched program must not inherit that.
        r = run(cli() + ["run", "cat", "/proc/self/status"])
        self.assertEqual(r.returncode, 0, describe(r))
        ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", r.stdout, re.M).group(1), 16)
        self.assertFalse(ignored & (1 << (signal.SIGPIPE - 1)), f"SIGPIPE ignored: {ignored:x}")

    def test_ld_preload_keeps_what_is_there_behind_the_shim(self):
        lib = library()
        show = ["run", "sh", "-c", 'printf %s "$LD_PRELOAD"']
        r = run(cli() + show, env=clean_env(LD_PRELOAD="libm.so.6"))
        self.assertEqual(r.stdout, f"{lib}:libm.so.6", describe(r))
        r = run(cli() + show, env=clean_env(LD_PRELOAD=f"libm.so.6 {lib}"))
        self.assertEqual(r.stdout, f"{lib}:libm.so.6", describe(r))
        r = run(cli() + show)
        self.assertEqual(r.stdout, lib, describe(r))

    def test_a_missing_command_is_127(self):
        r = run(cli() + ["run", "no-such-command-xyz"])
        self.assertEqual(r.returncode, 127, describe(r))
        self.assertIn("no-such-command-xyz: command not found", r.stderr)
        r = run(cli() + ["run"])
        self.assertEqual(r.returncode, 2, describe(r))


# A Python process started without LD_PRELOAD loads the harness plugin (which links the
# fake libMIOpen) with RTLD_LOCAL, as PyTorch's extension modules load libMIOpen, and runs
# it. argv: plugin, dlopen flags ("lazy"/"now"), when to import rdna1shim
# ("before"/"after"/"never").
PLUGIN_CHILD = r"""
import ctypes, os, sys
plugin, flags, when = sys.argv[1:4]
if when == "before":
    import rdna1shim
libc = ctypes.CDLL(None)
libc.dlopen.restype = ctypes.c_void_p
libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.dlsym.restype = ctypes.c_void_p
libc.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
mode = (os.RTLD_LAZY if flags == "lazy" else os.RTLD_NOW) | os.RTLD_LOCAL
handle = libc.dlopen(plugin.encode(), mode)
assert handle, "dlopen failed"
if when == "after":
    import rdna1shim
if when != "never":
    print("ACTIVE", rdna1shim.active(), "|", rdna1shim.status(), flush=True)
    version = ctypes.CFUNCTYPE(ctypes.c_char_p)
    try:
        print("GLOBAL", version(ctypes.cast(libc.rdna1shim_version, ctypes.c_void_p).value)().decode(), flush=True)
    except AttributeError:
        print("GLOBAL none", flush=True)
main = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p))(
    libc.dlsym(handle, b"harness_main"))
args = [a.encode() for a in ["harness"] + sys.argv[4:]]
rc = main(len(args), (ctypes.c_char_p * len(args))(*args))
libc.fflush(None)
sys.exit(rc)
"""


class ImportActivation(unittest.TestCase):
    def child(self, plugin, flags, when):
        args = ["--mode", "default", "--case", CASE]
        return run([sys.executable, "-c", PLUGIN_CHILD, os.path.join(BIN, plugin), flags, when] + args,
                   env=clean_env(RDNA1SHIM_LOG="info"), cwd=tempfile.gettempdir())

    def test_import_before_the_plugin_interposes(self):
        for plugin, flags in (("libconvplugin.so", "lazy"), ("libconvplugin.so", "now"),
                              ("libconvplugin_now.so", "lazy")):
            with self.subTest(plugin=plugin, flags=flags):
                r = self.child(plugin, flags, "before")
                self.assertEqual(r.returncode, 0, describe(r))
                self.assertNotIn(CRASH_MARKER, r.stderr)
                self.assertNotIn(GPU_RAN_MARKER, r.stderr)
                passed, failed = harness_summary(r.stdout)
                self.assertTrue(passed >= 3 and failed == 0, describe(r))
                self.assertIn("ACTIVE True | loaded by import rdna1shim: " + library(), r.stdout)
                self.assertRegex(r.stdout, r"GLOBAL rdna1shim \d")
                # The shim's lazy start found the real (fake) MIOpen loaded RTLD_LOCAL.
                self.assertIn("MIOpen from " + os.path.join(BIN, "libMIOpen.so"), r.stderr)
                self.assertIn("HIP runtime from " + os.path.join(BIN, "libamdhip64.so"), r.stderr)
                self.assertNotIn("Warning", r.stderr)

    def test_without_the_import_the_plugin_crashes(self):
        for plugin in ("libconvplugin.so", "libconvplugin_now.so"):
            with self.subTest(plugin=plugin):
                r = self.child(plugin, "lazy", "never")
                self.assertEqual(r.returncode, -signal.SIGABRT, describe(r))
                self.assertIn(CRASH_MARKER, r.stderr)

    def test_import_after_miopen_warns_and_changes_nothing(self):
        r = self.child("libconvplugin_now.so", "now", "after")
        self.assertIn("libMIOpen is already loaded in this process", r.stderr)
        self.assertIn("import rdna1shim` before `import torch`", r.stderr)
        self.assertIn("rdna1shim run python", r.stderr)
        self.assertIn("RDNA1ShimWarning", r.stderr)
        self.assertIn("ACTIVE False | not loaded: libMIOpen was loaded first", r.stdout)
        self.assertIn("GLOBAL none", r.stdout)
        # As the warning says: MIOpen's kernel runs, and crashes.
        self.assertEqual(r.returncode, -signal.SIGABRT, describe(r))
        self.assertIn(CRASH_MARKER, r.stderr)

    def test_under_run_the_import_loads_no_second_copy(self):
        code = ("import rdna1shim, os\n"
                "print(rdna1shim.active(), rdna1shim.status())\n"
                "print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'librdna1shim' in l}))\n")
        r = run(cli() + ["run", sys.executable, "-c", code])
        self.assertEqual(r.returncode, 0, describe(r))
        lines = r.stdout.splitlines()
        self.assertTrue(lines[0].startswith("True already loaded in this process (LD_PRELOAD)"), describe(r))
        self.assertEqual(len(eval(lines[1])), 1, describe(r))

    def test_a_missing_library_warns(self):
        r = run([sys.executable, "-c", "import rdna1shim; print(rdna1shim.active())"],
                env=clean_env(RDNA1SHIM_LIBRARY="/nonexistent/librdna1shim.so"), cwd=tempfile.gettempdir())
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertEqual(r.stdout.strip(), "False")
        self.assertIn("/nonexistent/librdna1shim.so does not exist", r.stderr)


class JupyterKernel(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="rdna1shim-kernel-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, args, **env):
        r = run(cli() + ["jupyter-kernel"] + args, env=clean_env(**env))
        self.assertEqual(r.returncode, 0, describe(r))
        return r

    def read(self, path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    def test_prefix_spec_preloads_the_shim(self):
        r = self.write(["--prefix", self.tmp, "--name", "gpu-cpu", "--display-name", "Torch (CPU convs)"])
        path = os.path.join(self.tmp, "share", "jupyter", "kernels", "gpu-cpu", "kernel.json")
        self.assertIn(os.path.dirname(path), r.stdout)
        spec = self.read(path)
        self.assertEqual(spec["display_name"], "Torch (CPU convs)")
        self.assertEqual(spec["language"], "python")
        self.assertEqual(spec["argv"][1:], ["-m", "ipykernel_launcher", "-f", "{connection_file}"])
        self.assertTrue(os.path.isabs(spec["argv"][0]) and os.access(spec["argv"][0], os.X_OK), spec)
        self.assertEqual(spec["env"], {"LD_PRELOAD": library()})
        # The kernel's interpreter, started as Jupyter would (spec env over ours), has the shim.
        probe = "print(any('librdna1shim' in l for l in open('/proc/self/maps')))"
        env = clean_env()
        env.update(spec["env"])
        r = run([spec["argv"][0], "-c", probe], env=env)
        self.assertEqual(r.stdout.strip(), "True", describe(r))
        r = run([spec["argv"][0], "-c", probe], env=clean_env())
        self.assertEqual(r.stdout.strip(), "False", describe(r))

    def test_user_data_dir(self):
        home = os.path.join(self.tmp, "home")
        env = {"HOME": home}
        r = run(cli() + ["jupyter-kernel"], env={k: v for k, v in clean_env(**env).items()
                                                  if k not in ("JUPYTER_DATA_DIR", "XDG_DATA_HOME")})
        self.assertEqual(r.returncode, 0, describe(r))
        spec = self.read(os.path.join(home, ".local", "share", "jupyter", "kernels", "rdna1shim", "kernel.json"))
        self.assertEqual(spec["display_name"], "Python 3 (rdna1shim)")
        data = os.path.join(self.tmp, "data")
        self.write(["--user", "--name", "Other"], JUPYTER_DATA_DIR=data)
        self.assertTrue(os.path.isfile(os.path.join(data, "kernels", "other", "kernel.json")))
        xdg = os.path.join(self.tmp, "xdg")
        r = run(cli() + ["jupyter-kernel"], env={k: v for k, v in clean_env(XDG_DATA_HOME=xdg).items()
                                                  if k != "JUPYTER_DATA_DIR"})
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertTrue(os.path.isfile(os.path.join(xdg, "jupyter", "kernels", "rdna1shim", "kernel.json")))

    def test_extra_env_python_and_rewrite(self):
        args = ["--prefix", self.tmp, "--env", "RDNA1SHIM_LOG=debug", "--env", "A=b=c", "--python", "python3"]
        self.write(args)
        path = os.path.join(self.tmp, "share", "jupyter", "kernels", "rdna1shim", "kernel.json")
        spec = self.read(path)
        self.assertEqual(spec["env"], {"LD_PRELOAD": library(), "RDNA1SHIM_LOG": "debug", "A": "b=c"})
        self.assertEqual(spec["argv"][0], shutil.which("python3"))
        self.write(["--prefix", self.tmp, "--display-name", "second"])
        self.assertEqual(self.read(path)["display_name"], "second")

    def test_bad_arguments(self):
        for args in (["--name", "bad name"], ["--env", "NOEQUALS"], ["--user", "--prefix", self.tmp]):
            r = run(cli() + ["jupyter-kernel", "--prefix", self.tmp] + args if args[0] != "--user"
                    else cli() + ["jupyter-kernel"] + args)
            self.assertEqual(r.returncode, 2, describe(r))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "share")))

    @unittest.skipUnless(INSTALLED, "writes into sys.prefix: only in the test's own virtual environment")
    def test_sys_prefix(self):
        self.write(["--sys-prefix"])
        spec = self.read(os.path.join(sys.prefix, "share", "jupyter", "kernels", "rdna1shim", "kernel.json"))
        self.assertEqual(spec["env"]["LD_PRELOAD"], library())
        self.assertEqual(os.path.dirname(spec["argv"][0]), os.path.dirname(sys.executable))


class Doctor(unittest.TestCase):
    def test_the_doctor_sees_the_shim_interpose_with_the_doubles(self):
        r = run(cli() + ["doctor", "--miopen", os.path.join(BIN, "libMIOpen.so"), "--python", sys.executable])
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertIn(f"The shim library is {library()}.", r.stdout)
        self.assertIn("interposes: with libMIOpen loaded RTLD_LOCAL", r.stdout)
        self.assertIn("`import rdna1shim` before torch interposes too", r.stdout)
        self.assertIn("nothing blocks use of the shim", r.stdout)
        # Without a routes file it points at the probe, and at the child program it would run.
        self.assertIn("[note] No routes file (RDNA1SHIM_ROUTES)", r.stdout)
        self.assertIn(f"`rdna1shim probe` (its child program is {probe_child()})", r.stdout)

    def test_the_doctor_reads_the_routes_file(self):
        tmp = tempfile.mkdtemp(prefix="rdna1shim-doctor-")
        try:
            routes = os.path.join(tmp, "routes.jsonl")
            line = {"op": "conv_fwd", "dtype": "fp32", "id": "c1"}
            with open(routes, "w", encoding="utf-8") as f:
                for route in ("gpu", "cpu", "gpu", "cpu", "cpu"):
                    f.write(json.dumps(dict(line, route=route)) + "\n")
            doctor = cli() + ["doctor", "--miopen", os.path.join(BIN, "libMIOpen.so"), "--python", sys.executable]
            r = run(doctor, env=clean_env(RDNA1SHIM_ROUTES=routes))
            self.assertEqual(r.returncode, 0, describe(r))
            self.assertIn(f"[  ok] RDNA1SHIM_ROUTES={routes}: 2 configurations to the GPU, 3 to the CPU", r.stdout)
            self.assertNotIn("No routes file", r.stdout)
            # A record is not a routes file: the shim would not use it.
            with open(routes, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            r = run(doctor, env=clean_env(RDNA1SHIM_ROUTES=routes))
            self.assertEqual(r.returncode, 0, describe(r))
            self.assertIn(f"[warn] RDNA1SHIM_ROUTES={routes}: line 6 has no \"route\"", r.stdout)
            self.assertIn("the shim will not use it", r.stdout)
            r = run(doctor, env=clean_env(RDNA1SHIM_ROUTES=os.path.join(tmp, "missing.jsonl")))
            self.assertIn("missing.jsonl: cannot read it", r.stdout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_the_doctor_says_when_the_probe_child_is_missing(self):
        r = run(cli() + ["doctor", "--miopen", os.path.join(BIN, "libMIOpen.so"), "--python", sys.executable],
                env=clean_env(RDNA1SHIM_PROBE_CHILD="/nonexistent/rdna1shim-probe"))
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertIn("its child program /nonexistent/rdna1shim-probe is missing: RDNA1SHIM_PROBE_CHILD", r.stdout)

    def test_the_doctor_fails_on_a_library_that_is_not_the_shim(self):
        r = run(cli() + ["doctor", "--shim", os.path.join(BIN, "libamdhip64.so"),
                         "--miopen", os.path.join(BIN, "libMIOpen.so"), "--python", sys.executable])
        self.assertEqual(r.returncode, 1, describe(r))
        self.assertIn("did not see the shim", r.stdout)


# What the fake GPU does in the probe's children: forward crashes, backward-data computes a
# wrong result, backward-weights works.
PROBE_FAULTS = "dir=fwd:crash;dir=bwd_data:wrong"
PROBE_VERDICTS = {"conv_fwd": "crashes", "conv_bwd_data": "wrong", "conv_bwd_weights": "works"}


class ProbeCommand(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="rdna1shim-probe-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def record(self):
        """Records the harness's three directions through `rdna1shim run` (all on the CPU)."""
        rec = os.path.join(self.tmp, "record.jsonl")
        r = run(cli() + ["run", os.path.join(BIN, "harness_direct"), "--mode", "default", "--case", CASE],
                env=clean_env(RDNA1SHIM_RECORD=rec))
        self.assertEqual(r.returncode, 0, describe(r))
        record = json_lines(rec)
        self.assertEqual(sorted(v["op"] for v in record), sorted(PROBE_VERDICTS), record)
        return rec, record

    def test_probe_writes_the_routes_of_a_recorded_run(self):
        rec, record = self.record()
        routes, table = os.path.join(self.tmp, "routes.jsonl"), os.path.join(self.tmp, "table.txt")
        miopen = os.path.join(BIN, "libMIOpen.so")
        r = run(cli() + ["probe", "--record", rec, "--out", routes, "--miopen", miopen, "--timeout", "10",
                         "--table", table], env=clean_env(FAKE_MIOPEN_FAULTS=PROBE_FAULTS))
        self.assertEqual(r.returncode, 0, describe(r))
        # The child program is the packaged one (installed) or the one named (checkout).
        self.assertIn(f"MIOpen {miopen}, HIP (the one MIOpen links), timeout 10 s, child {probe_child()}.", r.stdout)
        self.assertIn("probe: 1 of 3 configurations run on the GPU (works); 1 wrong, 1 crashes", r.stdout)
        self.assertIn(f"routes written to {routes}; train with RDNA1SHIM_ROUTES={routes}", r.stdout)
        probed = json_lines(routes)
        self.assertEqual([v["id"] for v in probed], [v["id"] for v in record])
        for v in probed:
            want = PROBE_VERDICTS[v["op"]]
            self.assertEqual(v["verdict"], want, v)
            self.assertEqual(v["route"], "gpu" if want == "works" else "cpu", v)
        crashed = next(v for v in probed if v["verdict"] == "crashes")
        self.assertTrue(crashed["probe"].startswith("SIGABRT") and CRASH_MARKER in crashed["probe"], crashed)
        self.assertGreater(next(v for v in probed if v["verdict"] == "wrong")["max_err"], 0.1)
        self.assertLess(next(v for v in probed if v["verdict"] == "works")["max_err"], 1e-5)
        with open(table, encoding="utf-8") as f:
            text = f.read()
        for verdict in set(PROBE_VERDICTS.values()):
            self.assertIn(f"  {verdict}  ", text)
        # `python -m rdna1shim probe` re-probes the crashed configuration on a GPU that no
        # longer crashes: its line changes, the others stay.
        r = run([sys.executable, "-m", "rdna1shim", "probe", "--record", rec, "--out", routes, "--miopen", miopen,
                 "--only", crashed["id"]], env=clean_env(FAKE_MIOPEN_FAULTS=""))
        self.assertEqual(r.returncode, 0, describe(r))
        self.assertIn(f"child {probe_child()}.", r.stdout)
        again = {v["id"]: v for v in json_lines(routes)}
        self.assertEqual(len(again), len(probed))
        for v in probed:
            if v["id"] == crashed["id"]:
                self.assertEqual((again[v["id"]]["verdict"], again[v["id"]]["route"]), ("works", "gpu"))
            else:
                self.assertEqual(again[v["id"]], v)

    def child_path(self, **env):
        """probe_child_path() in a fresh process with `env` over the clean environment."""
        base = {k: v for k, v in clean_env().items() if k not in ("RDNA1SHIM_PROBE_CHILD", "CARGO_TARGET_DIR")}
        base.update(env)
        r = run([sys.executable, "-c", "from rdna1shim._library import probe_child_path; print(probe_child_path())"],
                env=base, cwd=tempfile.gettempdir())
        self.assertEqual(r.returncode, 0, describe(r))
        return r.stdout.strip()

    def test_where_the_child_program_is_found(self):
        # A checkout's build and a program on PATH, both of which the packaged one beats.
        target = os.path.join(self.tmp, "target")
        built = os.path.join(target, "release", "rdna1shim-probe")
        on_path = os.path.join(self.tmp, "bin", "rdna1shim-probe")
        for p in (built, on_path):
            os.makedirs(os.path.dirname(p))
            with open(p, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(p, 0o755)
        path = os.pathsep.join([os.path.dirname(on_path), os.environ.get("PATH", "")])
        self.assertEqual(self.child_path(RDNA1SHIM_PROBE_CHILD="/some/where/probe"), "/some/where/probe")
        found = self.child_path(CARGO_TARGET_DIR=target, PATH=path)
        if INSTALLED:
            packaged = os.path.join(package_dir(), "rdna1shim-probe")
            self.assertEqual(found, packaged)
            self.assertTrue(os.access(packaged, os.X_OK), packaged)
            self.assertEqual(os.path.dirname(library()), package_dir(), "not next to the library")
            # It is a build of this crate's probe: without arguments it says how it is used.
            r = run([packaged])
            self.assertEqual(r.returncode, 2, describe(r))
            self.assertIn("usage: rdna1shim-probe --miopen LIB", r.stderr)
        else:
            self.assertEqual(found, built, "a checkout's build comes before PATH")
            empty = os.path.join(self.tmp, "empty")
            self.assertEqual(self.child_path(CARGO_TARGET_DIR=empty, PATH=path), on_path)

    def test_a_missing_child_program_is_reported(self):
        rec = os.path.join(self.tmp, "record.jsonl")
        config = {k: 1 for k in ("op", "dtype", "mode", "x", "w", "y", "pad", "stride", "dilation", "groups",
                                 "deterministic")}
        with open(rec, "w", encoding="utf-8") as f:
            f.write(json.dumps(config) + "\n")
        out = os.path.join(self.tmp, "routes.jsonl")
        args = cli() + ["probe", "--record", rec, "--out", out, "--miopen", os.path.join(BIN, "libMIOpen.so")]
        r = run(args, env=clean_env(RDNA1SHIM_PROBE_CHILD="/nonexistent/rdna1shim-probe"))
        self.assertEqual(r.returncode, 1, describe(r))
        self.assertIn("the probe's child program /nonexistent/rdna1shim-probe does not exist: "
                      "RDNA1SHIM_PROBE_CHILD names a file that does not exist", r.stderr)
        r = run(args + ["--child", "/nowhere/probe"])
        self.assertEqual(r.returncode, 1, describe(r))
        self.assertIn("--child /nowhere/probe does not exist", r.stderr)
        self.assertFalse(os.path.exists(out))
        r = run(cli() + ["probe"])
        self.assertEqual(r.returncode, 2, describe(r))
        self.assertIn("--record", r.stderr)


if __name__ == "__main__":
    unittest.main()
