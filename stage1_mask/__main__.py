"""`python -m stage1_mask fit|validate|test|predict -c stage1_mask/configs/phantom.yaml`."""

from stage1_mask.cli import main

if __name__ == "__main__":
    main()
