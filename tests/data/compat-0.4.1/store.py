"""Made with featx 0.4.1 (commit 2405678): a store of the 24 images in data/, signatures by
content (so that a checkout's new mtimes do not change its key), for tests/test_compat.py."""
import sys
from pathlib import Path

from featx.config import Config
from featx.extraction import extract

data, cache = Path(sys.argv[1]), Path(sys.argv[2])
c = Config()
c.dataset.root = str(data)
c.dataset.hash = "content"
c.dataset.test = 0.25
c.backbone.weights = "none"
c.backbone.input_size = 32
c.extract.batch_size = 8
c.cache_dir = str(cache)
print(extract(c, progress=False))
