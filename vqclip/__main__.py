import sys

from vqclip.cli import main

sys.exit(main())
