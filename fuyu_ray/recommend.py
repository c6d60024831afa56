"""`python -m fuyu_ray.recommend`: the command; it lives in `fuyu_ray.driver.recommend`."""

import sys

from fuyu_ray.driver.recommend import main

if __name__ == "__main__":
    sys.exit(main())
