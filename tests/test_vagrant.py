"""The Vagrant VM's recipe: what goes into the box, when it is rebuilt, and
that the Vagrantfile validates for both providers.

`make vm-test` itself (vagrant/vm-test.sh) boots the VM and checks the guest's
run of this suite; these tests cover the parts that decide what it boots.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from timing import scaled

REPO = Path(__file__).resolve().parent.parent
VAGRANT = REPO / "vagrant"


def recipe_copy(tmp_path: Path) -> Path:
    """A checkout holding only what the box recipe reads, to edit freely."""
    (tmp_path / "vagrant").mkdir()
    for name in ("build-box.sh", "provision.sh"):
        shutil.copy2(VAGRANT / name, tmp_path / "vagrant" / name)
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def build_box(repo: Path, option: str) -> str:
    result = subprocess.run(["bash", str(repo / "vagrant" / "build-box.sh"), option],
                            capture_output=True, text=True, check=True,
                            timeout=scaled(60))
    return result.stdout


def provision_packages_as_bash_sees_them() -> list[str]:
    """provision.sh's `packages` array, evaluated by bash itself."""
    text = (VAGRANT / "provision.sh").read_text()
    start = text.index("\npackages=(") + 1
    definition = text[start:text.index(")", start) + 1]
    script = definition + '\nprintf "%s\\n" "${packages[@]}"'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            check=True)
    return result.stdout.split()


def test_box_has_every_package_provision_installs() -> None:
    boxed = build_box(REPO, "--packages").split()
    wanted = provision_packages_as_bash_sees_them()
    assert wanted and set(wanted) <= set(boxed)
    # The guest's stock kernel comes with its matching headers.
    assert {"linux-image-amd64", "linux-headers-amd64"} <= set(boxed)


def test_box_key_changes_with_its_recipe_only(tmp_path: Path) -> None:
    repo = recipe_copy(tmp_path)
    provision = repo / "vagrant" / "provision.sh"
    pyproject = repo / "pyproject.toml"
    key = build_box(repo, "--key").strip()
    assert len(key) == 12

    provision.write_text(provision.read_text() + "\n# a comment, no package\n")
    assert build_box(repo, "--key").strip() == key

    provision.write_text(provision.read_text().replace(
        "packages=(", "packages=(strace ", 1))
    with_strace = build_box(repo, "--key").strip()
    assert with_strace != key
    assert "strace" in build_box(repo, "--packages").split()

    pyproject.write_text(pyproject.read_text().replace(
        'dev = ["pytest>=8"', 'dev = ["pytest>=8", "hypothesis"', 1))
    assert build_box(repo, "--key").strip() not in (key, with_strace)


def test_build_box_rejects_an_unknown_option() -> None:
    result = subprocess.run(["bash", str(VAGRANT / "build-box.sh"), "--bogus"],
                            capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 2
    assert result.stderr.strip() == "build-box: unknown option --bogus"


@pytest.mark.skipif(shutil.which("vagrant") is None,
                    reason="vagrant is not installed (make vm-test installs it)")
@pytest.mark.parametrize(("provider", "driver", "flags"), [
    ("libvirt", "kvm", []),
    ("libvirt", "qemu", []),
    # VirtualBox is not installed here: validate all but its provider block.
    ("virtualbox", "kvm", ["-p"]),
])
def test_vagrantfile_validates(tmp_path: Path, provider: str, driver: str,
                               flags: list[str]) -> None:
    env = {**os.environ, "VAGRANT_DEFAULT_PROVIDER": provider,
           "RECORDER_VM_DRIVER": driver, "VAGRANT_CHECKPOINT_DISABLE": "1",
           "VAGRANT_HOME": str(tmp_path / "home"),
           "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot")}
    result = subprocess.run(["vagrant", "validate", *flags], cwd=VAGRANT, env=env,
                            capture_output=True, text=True, timeout=scaled(120))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
