# Downloads of the torchvision datasets into `data_dir`, one local rule each: they run where
# Snakemake runs (with internet access), never as compute jobs. Their outputs are the files the
# loaders read, so data copied there by hand count as present and nothing is fetched.
# `prepare_data` takes these files as input (image_data.required_files).
from fragility.data import files as image_data  # noqa: E402

DATA_DIR = config.get("data_dir", "data")


rule download_mnist:
    output:
        image_data.download_files("mnist", DATA_DIR),
    log:
        f"{RESULTS}/logs/download_mnist.log",
    resources:
        mem_mb=2000,
        runtime=30,
    run:
        logged(
            log,
            f"MNIST downloaded into {DATA_DIR}",
            image_data.fetch,
            config["studies"],
            "mnist",
            DATA_DIR,
        )


rule download_cifar10:
    output:
        image_data.download_files("cifar10", DATA_DIR),
    log:
        f"{RESULTS}/logs/download_cifar10.log",
    resources:
        mem_mb=2000,
        runtime=30,
    run:
        logged(
            log,
            f"CIFAR-10 downloaded into {DATA_DIR}",
            image_data.fetch,
            config["studies"],
            "cifar10",
            DATA_DIR,
        )


rule download_cifar100:
    output:
        image_data.download_files("cifar100", DATA_DIR),
    log:
        f"{RESULTS}/logs/download_cifar100.log",
    resources:
        mem_mb=2000,
        runtime=30,
    run:
        logged(
            log,
            f"CIFAR-100 downloaded into {DATA_DIR}",
            image_data.fetch,
            config["studies"],
            "cifar100",
            DATA_DIR,
        )


localrules:
    download_mnist,
    download_cifar10,
    download_cifar100,
