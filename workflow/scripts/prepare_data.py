import os
import sys

# the library in src/ (importable in any environment: venv, --sdm conda, cluster nodes)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))

from fragility.pipeline import prepare_data
from fragility.runtime import start_job

log = start_job(snakemake.log[0])
info = prepare_data(snakemake.wildcards.dataset, snakemake.params.dataset_cfg, snakemake.params.data_dir, snakemake.output[0])
log(f"prepared {snakemake.wildcards.dataset}: {info}")
