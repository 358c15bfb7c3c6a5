# Influence functions vs leave-one-out re-training (Basu, Pope & Feizi, ICLR 2021).
# Targets: `all` (every enabled study), `iris`, `mnist_small`, `table1`, or any output path under
# results/ (e.g. results/table1/table1.csv).


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/influence.smk"
include: "workflow/rules/loo.smk"
include: "workflow/rules/noise.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/targets_common.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        [study_targets(study) for study in enabled_studies(config)],


rule iris:
    input:
        study_targets("iris"),


rule mnist_small:
    input:
        study_targets("mnist_small"),


rule table1:
    input:
        study_targets("table1"),
