import sys

from edgevis.cli import main

sys.exit(main())
