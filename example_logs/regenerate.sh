#!/usr/bin/env bash
# Regenerates example_logs/: one small real run per method on the embedded model (offline), a compressed latent_mas
# run with fidelity, and the report made from the four. Uses $PYTHON, else .venv/bin/python, else python:
#     bash example_logs/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
py=${PYTHON:-python}
[ -n "${PYTHON:-}" ] || [ ! -x .venv/bin/python ] || py=.venv/bin/python
out=example_logs
common=(--task gsm8k --max_samples 5 --temperature 0 --max_new_tokens 96 --latent_steps 10 --generate_bs 5)
rm -rf "$out"/baseline "$out"/text_mas "$out"/latent_mas "$out"/latent_mas_knn-bottom_0.6 "$out"/report
$py run.py --method baseline "${common[@]}" --run_dir "$out/baseline"
$py run.py --method text_mas "${common[@]}" --run_dir "$out/text_mas"
$py run.py --method latent_mas "${common[@]}" --run_dir "$out/latent_mas"
$py run.py --method latent_mas "${common[@]}" --kv_policy knn-bottom --kv_keep 0.6 --fidelity \
    --run_dir "$out/latent_mas_knn-bottom_0.6"
$py run.py report "$out"/baseline "$out"/text_mas "$out"/latent_mas "$out"/latent_mas_knn-bottom_0.6 \
    --out "$out/report"
