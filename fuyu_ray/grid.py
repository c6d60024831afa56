"""`python -m fuyu_ray.grid`: the command; it lives in `fuyu_ray.driver.grid`."""

import sys

from fuyu_ray.driver.grid import main

if __name__ == "__main__":
    sys.exit(main())
