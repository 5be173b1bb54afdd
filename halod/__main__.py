import sys

from halod.cli import main

sys.exit(main())
