"""Runs every command of docs/adding-a-recipe.md, in order, so the guide cannot go stale."""
import os
import re
import subprocess

from helpers import ROOT

GUIDE = ROOT / "docs" / "adding-a-recipe.md"


def commands():
    """(command, expected exit code) for each line of the guide's bash blocks."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S):
        for line in block.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = re.search(r"#\s*exit code (\d+)\s*$", line)
            out.append((line[:m.start()].strip() if m else line.strip(), int(m.group(1)) if m else 0))
    return out


def test_guide_commands_run_as_documented(tmp_path):
    cmds = commands()
    assert any("new_recipe.py" in c for c, _ in cmds) and any("diff_layers.py" in c for c, _ in cmds)
    env = {**os.environ, "WORK": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ZOO_RECIPE_PATH", None)
    # one shell, so that the guide's `export`s carry over from command to command
    script = ["set -u"]
    for i, (cmd, code) in enumerate(cmds):
        script.append(f"{cmd}\nrc=$?; if [ $rc -ne {code} ]; then echo STEP {i} exited $rc >&2; "
                      f"exit 99; fi")
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    step = re.search(r"STEP (\d+) exited", proc.stderr)
    assert proc.returncode == 0, (cmds[int(step.group(1))] if step else None,
                                  proc.stdout[-3000:] + proc.stderr[-3000:])
    assert "wrong activation: torch applies gelu (exact), keras gelu (tanh approximation)" \
        in proc.stdout
    assert "| `example/tinynet` |" in (tmp_path / "README.md").read_text()
    assert (tmp_path / "cache" / "models" / "example" / "tinynet" / "model.weights.h5").is_file()
