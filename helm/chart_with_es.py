"""Make a copy of the chart that declares the official Elastic chart as a dependency.

helm refuses to lint or render a chart whose declared dependency is missing from charts/,
even when the dependency's condition is false, and this project vendors no third-party
charts. So helm/distillery declares none; this script copies it to OUT/distillery, adds

    dependencies: [{name: elasticsearch, version: ES_CHART_VERSION,
                    repository: https://helm.elastic.co, condition: elasticsearch.enabled}]

and runs `helm dependency update` (network access to helm.elastic.co), after which
`helm install NAME OUT/distillery -f helm/distillery/examples/bundled-es.yaml` deploys a
single-node Elasticsearch beside the gateway. Usage (what `make chart-with-es` runs):
    python helm/chart_with_es.py build/helm --helm .tools/helm-v4.1.4/helm [--no-fetch]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent / "distillery"
ES_REPOSITORY = "https://helm.elastic.co"
# The last release of elastic/helm-charts' elasticsearch chart (Elasticsearch 8.5.1).
ES_CHART_VERSION = "8.5.1"
DEPENDENCY = f"""
dependencies:
  - name: elasticsearch
    version: "{ES_CHART_VERSION}"
    repository: {ES_REPOSITORY}
    condition: elasticsearch.enabled
"""


def make_copy(out: Path) -> Path:
    target = out / CHART.name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(CHART, target, ignore=shutil.ignore_patterns("charts", "examples"))
    chart_yaml = target / "Chart.yaml"
    text = chart_yaml.read_text()
    if "\ndependencies:" in text:
        raise SystemExit(f"chart_with_es: {CHART / 'Chart.yaml'} already declares dependencies")
    chart_yaml.write_text(text.rstrip("\n") + "\n" + DEPENDENCY)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder that receives distillery/")
    parser.add_argument("--helm", default="helm", help="helm binary")
    parser.add_argument("--no-fetch", action="store_true",
                        help="only write the copy; skip `helm dependency update`")
    args = parser.parse_args(argv)
    target = make_copy(args.out)
    if not args.no_fetch:
        result = subprocess.run([args.helm, "dependency", "update", str(target)])
        if result.returncode != 0:
            print(f"chart_with_es: `helm dependency update {target}` failed: it needs network "
                  f"access to {ES_REPOSITORY}", file=sys.stderr)
            return result.returncode
    print(f"chart_with_es: {target} declares elasticsearch {ES_CHART_VERSION}"
          + ("" if args.no_fetch else " (downloaded into charts/)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
