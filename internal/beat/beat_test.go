package beat

import (
	"testing"
	"testing/synctest"
	"time"
)

func TestNextIsOnThePhase(t *testing.T) {
	base := time.Unix(1_700_000_000, 0)
	for _, period := range []time.Duration{250 * time.Millisecond, time.Second, 5 * time.Second, 30 * time.Second} {
		for _, d := range []time.Duration{0, 1, 123 * time.Millisecond, 999 * time.Millisecond, 7 * time.Second} {
			now := base.Add(d)
			n := Next(now, period)
			if !n.After(now) || n.Sub(now) > period {
				t.Errorf("Next(%v, %v) = %v: not within (now, now+period]", d, period, n.Sub(now))
			}
			if off := ((n.UnixNano()-phase)%int64(period) + int64(period)) % int64(period); off != 0 {
				t.Errorf("Next(%v, %v) is %d ns off the phase", d, period, off)
			}
		}
	}
}

func TestPeriodsThatDivideEachOtherShareBeats(t *testing.T) {
	now := time.Unix(1_700_000_000, 424242)
	s := Next(now, 5*time.Second)
	// Every 5 s beat is also a 1 s and a 250 ms beat.
	if Next(s.Add(-time.Nanosecond), time.Second) != s || Next(s.Add(-time.Nanosecond), 250*time.Millisecond) != s {
		t.Errorf("the 5 s beat %v is not a beat of 1 s and 250 ms", s)
	}
}

func TestTickerBeatsTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := NewTicker(time.Second)
		defer a.Stop()
		time.Sleep(300 * time.Millisecond) // started at another moment
		b := NewTicker(time.Second)
		defer b.Stop()
		select {
		case <-a.C: // a beat before b started
		default:
		}
		for range 3 {
			ta, tb := <-a.C, <-b.C
			if !ta.Equal(tb) {
				t.Fatalf("tickers of one period started apart beat apart: %v and %v", ta, tb)
			}
		}
		b.Reset(250 * time.Millisecond)
		var got int
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); got++ {
			<-b.C
		}
		if got < 3 {
			t.Errorf("after Reset(250ms), %d beats in a second", got)
		}
		b.Stop()
		select {
		case <-b.C:
		default:
		}
		time.Sleep(2 * time.Second)
		select {
		case <-b.C:
			t.Error("a beat after Stop")
		default:
		}
	})
}

func TestSpreadBoundsMessagesPerSecond(t *testing.T) {
	base := 30 * time.Second
	if got := Spread(base, 3); got != base {
		t.Errorf("Spread(30s, 3) = %v, want the base", got)
	}
	for _, n := range []int{10, 40, 1000} {
		p := Spread(base, n)
		perSec := float64(n) / p.Seconds()
		if limit := float64(SpreadPeers) / base.Seconds(); perSec > limit*1.0001 {
			t.Errorf("Spread(30s, %d) = %v: %.3f messages a second, more than %.3f", n, p, perSec, limit)
		}
	}
	if Spread(base, 40) != 2*Spread(base, 20) {
		t.Errorf("Spread does not grow in proportion: %v at 20, %v at 40", Spread(base, 20), Spread(base, 40))
	}
}
