import sys

from shmrt.bench.harness import main

sys.exit(main())
