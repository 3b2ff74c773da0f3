"""GPU check, section 4: the label-efficiency study's gpu profile, reduced to fit the device budget.

``benchmarks/bench_ssl_benefit.py --profile gpu`` (preset M, nuclei (+ the unseen c-Fos test), k = 1 and all, 2 seeds,
scratch and MAE) through the real commands on cuda; results, table and plot go to ``$OUT/ssl_benefit_gpu.*``.
The work folder is kept between calls on a warm machine, so a second call resumes the study.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_ssl_benefit import main  # noqa: E402

OUT = Path(os.environ["OUT"])
sys.exit(main(["--profile", "gpu", "--work", "/tmp/ssl_gpu", "-o", str(OUT / "ssl_benefit_gpu.json"),
               *sys.argv[1:]]))
