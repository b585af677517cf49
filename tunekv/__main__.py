import sys

from tunekv.cli.main import main

sys.exit(main())
