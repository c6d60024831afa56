"""`python -m fuyu_ray.gpu_check`: the command; it lives in `fuyu_ray.driver.gpu_check`."""

import sys

from fuyu_ray.driver.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
