"""benchmarks/gpu_throughput.py on a CPU with its tiny model: it runs and measures the loops,
the compiled one included."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"


def test_gpu_throughput_script_measures_the_loops_on_a_tiny_model(tmp_path):
    out = tmp_path / "throughput.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--batch-sizes", "4",
                           "--max-length", "128", "--compile", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [r["loop"] for r in result["results"]] == ["padded", "bucketed", "bucketed + compile"]
    for r in result["results"]:
        assert r["tokens_per_s"] > 0 and 0 < r["flops_per_s"] < result["peak_flops"] * 4 and r["peak_gib"] > 0
    assert "MFU against" in proc.stdout
