"""`python -m stage2_ct fit -c stage2_ct/configs/{vae,ldm}/phantom.yaml`."""

from stage2_ct.cli import main

if __name__ == "__main__":
    main()
