"""Run nnU-Net v2's own dataset check on a raw dataset folder (a module file: the check starts
worker processes, which re-import their __main__).

    python tests/tools/nnunet_verify.py DATASET_FOLDER
"""

import sys

if __name__ == "__main__":
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(sys.argv[1], num_processes=1)
    print("nnU-Net verify_dataset_integrity: OK")
