"""`python -m fuyu_ray.report`: the command; it lives in `fuyu_ray.driver.report`."""

import sys

from fuyu_ray.driver.report import main

if __name__ == "__main__":
    sys.exit(main())
