# Influence functions vs leave-one-out re-training (Basu, Pope & Feizi, ICLR 2021).
# Targets: `all` (every enabled study), a study's name (`iris`, `mnist_small`, `table1`, the appendix
# studies `appendix_cifar100` and `appendix_imagenet`, or any study of your config), `appendix` (both
# appendix studies), or any output path under results/ (e.g. results/table1/table1.csv).


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/truths_common.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/influence.smk"
include: "workflow/rules/loo.smk"
include: "workflow/rules/fused.smk"
include: "workflow/rules/noise.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/ground_truths.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        [study_targets(study) for study in enabled_studies(config)],


# one target per study, named after it (`snakemake --cores 2 iris`)
for _study in config["studies"]:

    rule:
        name:
            _study
        input:
            study_targets(_study),


rule appendix:
    input:
        [
            study_targets(study)
            for study in ("appendix_cifar100", "appendix_imagenet")
            if study in config["studies"]
        ],
