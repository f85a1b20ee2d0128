"""scripts/fetch_pretrained_teachers.sh up to the network boundary, offline.

Fake ``curl``/``wget`` executables on PATH answer from a routes file: they copy a file from disk
(a tiny resnet8 RepDistiller-style checkpoint, or a cifar_teachers.tar like the mdistiller
release asset), fail as an unreachable host or an HTTP error does, or cut a transfer halfway.
Every call is logged, so the tests see which URLs were tried and in which order. The script
checks what it downloads with scripts/check_teachers.py, which really loads the checkpoint.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "fetch_pretrained_teachers.sh")
HOST = "http://shape2prog.csail.mit.edu/repo"
MIRROR = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
CKPT = "ckpt_epoch_240.pth"
BASH = shutil.which("bash")

FAKE_DOWNLOADER = r'''#!{python}
import json, os, shutil, sys
prog = os.path.basename(sys.argv[0])
args = sys.argv[1:]
out, url = args[args.index("-o" if prog == "curl" else "-O") + 1], args[-1]
with open(os.environ["FAKE_NET_LOG"], "a") as log:
    log.write(f"{{prog}} {{url}}\n")
with open(os.environ["FAKE_NET_ROUTES"]) as f:
    route = json.load(f).get(url)
curl = prog == "curl"
if route is None:
    host = url.split("/")[2]
    sys.stderr.write(f"curl: (6) Could not resolve host: {{host}}\n" if curl
                     else f"wget: unable to resolve host address '{{host}}'\n")
    sys.exit(6 if curl else 4)
if route["kind"] == "http_error":
    sys.stderr.write("curl: (22) The requested URL returned error: 404\n" if curl
                     else f"{{url}}:\n2024-01-01 00:00:00 ERROR 404: Not Found.\n")
    sys.exit(22 if curl else 8)
with open(route["path"], "rb") as f:
    data = f.read()
if route["kind"] == "cut":
    with open(out, "wb") as f:
        f.write(data[: len(data) // 2])
    sys.stderr.write("curl: (18) transfer closed with outstanding read data remaining\n" if curl
                     else "wget: read error: Connection reset by peer\n")
    sys.exit(18 if curl else 4)
with open(out, "wb") as f:
    f.write(data)
'''

# what the script needs when the test hides curl (so that it uses wget)
TOOLS = ["mktemp", "mkdir", "rm", "rmdir", "mv", "cat", "grep", "tail", "tr", "dirname",
         "basename", "tar"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny teachers saved as RepDistiller saves them: resnet8 as the original host serves it, a
    mirror-style cifar_teachers.tar holding another resnet8 and a resnet14, and a resnet20."""
    from models import model_dict

    root = tmp_path_factory.mktemp("assets")

    def save(name, seed, path):
        torch.manual_seed(seed)
        state = model_dict[name](num_classes=100).state_dict()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"epoch": 240, "model": state, "accuracy": 51.5}, path)
        return str(path)

    paths = {"host_resnet8": save("resnet8", 0, root / "host" / "resnet8_vanilla" / CKPT),
             "resnet20": save("resnet20", 3, root / "here" / "resnet20_vanilla" / CKPT),
             "tar_resnet8": save("resnet8", 1, root / "cifar_teachers" / "resnet8_vanilla" / CKPT),
             "tar_resnet14": save("resnet14", 2, root / "cifar_teachers" / "resnet14_vanilla" / CKPT)}
    paths["tar"] = str(root / "cifar_teachers.tar")
    with tarfile.open(paths["tar"], "w") as tar:  # members cifar_teachers/<name>_vanilla/<ckpt>
        tar.add(root / "cifar_teachers", arcname="cifar_teachers")
    html = root / "error.html"
    html.write_text("<html><body>Service unavailable</body></html>\n")
    paths["html"] = str(html)
    return paths


class Net:
    """A working folder, a temp folder, fake downloaders and their routes and call log."""

    def __init__(self, tmp_path, downloader="curl"):
        self.work = tmp_path / "work"
        self.tmp = tmp_path / "tmp"
        self.bin = tmp_path / "bin"
        for d in (self.work, self.tmp, self.bin):
            d.mkdir()
        self.log = tmp_path / "calls.log"
        self.routes_file = tmp_path / "routes.json"
        self.routes = {}
        fake = self.bin / downloader
        fake.write_text(FAKE_DOWNLOADER.format(python=sys.executable))
        fake.chmod(0o755)
        # `python` is this interpreter: a script that execs it (a symlink to it would start a
        # venv's base interpreter, without the venv's torch)
        (self.bin / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (self.bin / "python").chmod(0o755)
        path = f"{self.bin}{os.pathsep}{os.environ['PATH']}"
        if downloader == "wget":  # a PATH without the real curl: only the tools the script needs
            for tool in TOOLS:
                os.symlink(shutil.which(tool), self.bin / tool)
            path = str(self.bin)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("TEACHER_BASE_URL", "TEACHER_MIRROR_URL")}
        self.env.update(PATH=path, TMPDIR=str(self.tmp), FAKE_NET_LOG=str(self.log),
                        FAKE_NET_ROUTES=str(self.routes_file))

    def run(self, *names, **env):
        self.routes_file.write_text(json.dumps(self.routes))
        return subprocess.run([BASH, SCRIPT, *names], cwd=self.work, env={**self.env, **env},
                              capture_output=True, text=True, timeout=120)

    def calls(self):
        return self.log.read_text().splitlines() if self.log.exists() else []

    def tree(self):
        """Every path under the working folder (folders too), relative."""
        return sorted(os.path.relpath(os.path.join(d, n), self.work)
                      for d, dirs, files in os.walk(self.work) for n in dirs + files)


def host_url(name, base=HOST):
    return f"{base}/{name}_vanilla/{CKPT}"


def target(name):
    return os.path.join("save", "models", f"{name}_vanilla", CKPT)


def assert_one_error_line(out, *fragments):
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


@pytest.mark.parametrize("downloader", ["curl", "wget"])
def test_the_scripts_python_is_this_interpreter_with_its_packages(tmp_path, downloader):
    """In a venv too: the ``python`` the script finds has this interpreter's prefix."""
    net = Net(tmp_path, downloader)
    out = subprocess.run([BASH, "-c", "python -c 'import sys; print(sys.prefix)'"], env=net.env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == sys.prefix, out.stdout + out.stderr


def test_unreachable_hosts_leave_no_folder_and_say_so_in_one_line(tmp_path):
    net = Net(tmp_path)
    out = net.run("resnet8", "resnet14")
    assert_one_error_line(out, "resnet8 resnet14", HOST, MIRROR, "Could not resolve host")
    assert net.tree() == []  # no save/, no empty save/models/<name>_vanilla/
    assert os.listdir(net.tmp) == []
    # the original host first (given up after it proved unreachable), then the mirror once
    assert net.calls() == [f"curl {host_url('resnet8')}", f"curl {MIRROR}"]


@pytest.mark.parametrize("downloader", ["curl", "wget"])
def test_cut_downloads_leave_no_partial_file(tmp_path, assets, downloader):
    net = Net(tmp_path, downloader)
    (net.work / "save" / "models").mkdir(parents=True)  # already there: kept, and left empty
    net.routes = {host_url("resnet8"): {"kind": "cut", "path": assets["host_resnet8"]},
                  MIRROR: {"kind": "cut", "path": assets["tar"]}}
    out = net.run("resnet8")
    assert_one_error_line(out, "resnet8", target("resnet8"))
    assert net.tree() == ["save", os.path.join("save", "models")]
    assert os.listdir(net.tmp) == []
    assert net.calls() == [f"{downloader} {host_url('resnet8')}", f"{downloader} {MIRROR}"]


def test_teacher_base_url_is_tried_first_then_the_mirror(tmp_path, assets):
    net = Net(tmp_path)
    (net.work / target("resnet20")).parent.mkdir(parents=True)  # already in place: kept, checked
    shutil.copyfile(assets["resnet20"], net.work / target("resnet20"))
    base = "http://teachers.example.org/repdistiller"
    net.routes = {host_url("resnet8", base): {"kind": "serve", "path": assets["host_resnet8"]},
                  host_url("resnet14", base): {"kind": "http_error"},
                  MIRROR: {"kind": "serve", "path": assets["tar"]}}
    out = net.run("resnet20", "resnet8", "resnet14", TEACHER_BASE_URL=base + "/")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == ""
    # the overriding host for each missing teacher (the default host never), then the mirror once
    assert net.calls() == [f"curl {host_url('resnet8', base)}", f"curl {host_url('resnet14', base)}",
                           f"curl {MIRROR}"]
    assert same_bytes(net.work / target("resnet8"), assets["host_resnet8"])  # not the archive's
    assert same_bytes(net.work / target("resnet14"), assets["tar_resnet14"])
    assert same_bytes(net.work / target("resnet20"), assets["resnet20"])
    assert f"have {target('resnet20')}" in out.stdout
    for name in ("resnet20", "resnet8", "resnet14"):
        assert f"ok {target(name)}: {name}, " in out.stdout  # loaded into its architecture
    folders = [os.path.join("save", "models", f"{n}_vanilla") for n in ("resnet8", "resnet14", "resnet20")]
    assert net.tree() == sorted(["save", os.path.join("save", "models"), *folders,
                                 *(os.path.join(f, CKPT) for f in folders)])
    assert os.listdir(net.tmp) == []


def test_mirror_archive_without_the_teacher_is_an_error(tmp_path, assets):
    net = Net(tmp_path)
    net.routes = {host_url("resnet20"): {"kind": "http_error"},
                  MIRROR: {"kind": "serve", "path": assets["tar"]}}
    out = net.run("resnet20")
    assert_one_error_line(out, "resnet20", "404", "archive has no resnet20_vanilla")
    assert net.tree() == []
    assert os.listdir(net.tmp) == []


def test_a_download_that_does_not_load_is_not_installed(tmp_path, assets):
    net = Net(tmp_path)  # e.g. a proxy's error page served with status 200
    net.routes = {host_url("resnet8"): {"kind": "serve", "path": assets["html"]}}
    out = net.run("resnet8", TEACHER_MIRROR_URL="")
    assert_one_error_line(out, "resnet8", "does not load", "TEACHER_MIRROR_URL is empty")
    assert net.calls() == [f"curl {host_url('resnet8')}"]
    assert net.tree() == []
    assert os.listdir(net.tmp) == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_real_curl_with_file_urls(tmp_path, assets):
    """The real curl with the script's flags: the original host fails (no such file), the
    mirror archive given by TEACHER_MIRROR_URL is read from disk but lacks the teacher."""
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), "TEACHER_BASE_URL": f"file://{tmp_path}/nowhere",
           "TEACHER_MIRROR_URL": f"file://{assets['tar']}"}
    out = subprocess.run([BASH, SCRIPT, "resnet20"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=120)
    assert_one_error_line(out, f"file://{tmp_path}/nowhere: curl: (37)",
                          f"mirror file://{assets['tar']}: the archive has no resnet20_vanilla")
    assert os.listdir(work) == []
    assert os.listdir(tmp) == []
