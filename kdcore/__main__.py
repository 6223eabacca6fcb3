import sys

from kdcore.cli import main

sys.exit(main())
