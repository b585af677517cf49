import sys

from tunekv.cli import main

sys.exit(main())
