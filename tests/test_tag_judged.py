"""The final choice is consistent with the analyst's comparisons: the winner takes the loser's place
(constructed cases, fast)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from opsef_opt.score.tag_model import judged_pick, judged_scores, top_pick
from opsef_opt.tags.queue import choose_pairs, simulate_tagging


def test_the_winner_of_a_comparison_takes_the_losers_place():
    scores = [0.9, 0.8, 0.7, 0.1, 0.05]
    # 3 beat 0 (the proxy's first): 0 is out; top_pick falls to 1, never judged; the winner 3 is known to be
    # better than the run the proxy put first, so it is chosen
    assert top_pick(scores, {}, [(3, 0)]) == 1
    assert judged_pick(scores, {}, [(3, 0)]) == 3
    lifted = judged_scores(scores, {}, [(3, 0)])
    assert lifted[3] == 0.9 and lifted[1] == 0.8 and lifted[4] == 0.05
    # transitively: 4 beat 3, which beat 0
    assert judged_pick(scores, {}, [(3, 0), (4, 3)]) == 4
    # equal to a winner: both inherit; the better by its own score is chosen
    assert judged_scores(scores, {}, [(3, 0), (4, 3, 0.5)])[4] == 0.9
    assert judged_pick(scores, {}, [(3, 0), (3, 4, 0.5)]) == 3
    # a higher tag is a judgement too: 'correct' above 'failed'
    assert judged_pick(scores, {0: "failed", 4: "correct"}) == 4
    # nothing judged: the plain ranking (NaN last)
    assert judged_pick([np.nan, 0.2, 0.5]) == 2
    np.testing.assert_array_equal(judged_scores([0.3, 0.2]), [0.3, 0.2])


def test_the_winner_leads_the_next_comparisons_and_is_chosen():
    """A proxy that puts the best run 7th of 12: once it beat the leader it leads (it is defended, not the
    proxy's second run, which nobody compared), and the simulated analyst ends with it."""
    rng = np.random.default_rng(0)
    n = 12
    proxy = np.linspace(1.0, 0.0, n)
    X = pd.DataFrame({"proxy.shape": rng.uniform(size=n), "proxy.contrast": rng.normal(size=n)})
    pairs = choose_pairs(X, proxy, {}, [(6, 0)], k=2, seed=0)
    assert len(pairs) == 2 and all(a == 6 for a, _ in pairs)
    f1 = np.linspace(0.8, 0.5, n)
    f1[6] = 0.95
    chosen, clicks = simulate_tagging(X, proxy, f1, n_tags=8, seed=0)
    assert clicks == 8 and chosen == 6
