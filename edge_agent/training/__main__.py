import sys

from edge_agent.training.train import main

sys.exit(main())
