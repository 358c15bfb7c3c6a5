#!/usr/bin/env bash
# Installs the library (src/fragility) into the environment of envs/environment.yaml, editable, so
# every job imports the workflow's own code. Snakemake runs this once, right after it creates the
# environment for `snakemake --sdm conda` (Snakemake's post-deploy script: same name as the
# environment file, `.post-deploy.sh` instead of `.yaml`), inside that environment and from the
# workflow's working directory, i.e. the repository root. By hand, after
# `conda env create -f envs/environment.yaml`: `conda activate fragility && bash envs/environment.post-deploy.sh`
# from the repository root. FRAGILITY_ROOT overrides the directory.
set -euo pipefail
root=${FRAGILITY_ROOT:-$PWD}
if [ ! -f "$root/pyproject.toml" ] || [ ! -d "$root/src/fragility" ]; then
  echo "envs/environment.post-deploy.sh: $root is not the repository root (no pyproject.toml and" \
    "src/fragility there); run snakemake from the repository root or set FRAGILITY_ROOT" >&2
  exit 1
fi
# --no-deps: every dependency is pinned in envs/environment.yaml; --no-build-isolation: build with
# the environment's own setuptools, without another download
python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e "$root"
python -c "import fragility, sys; print('fragility from', fragility.__file__, 'in', sys.prefix)"
