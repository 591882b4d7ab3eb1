"""``python -m training``: train a version (:mod:`training.train`), or, as
``python -m training export-reviews``, export the review queue's answers as labelled data
(:mod:`training.export_reviews`).
"""

import sys

from training import export_reviews, train

if sys.argv[1:2] == ["export-reviews"]:
    sys.exit(export_reviews.main(sys.argv[2:]))
sys.exit(train.main())
