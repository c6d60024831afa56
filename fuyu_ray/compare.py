"""`python -m fuyu_ray.compare`: the command; it lives in `fuyu_ray.driver.compare`."""

import sys

from fuyu_ray.driver.compare import main

if __name__ == "__main__":
    sys.exit(main())
