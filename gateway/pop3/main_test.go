package pop3

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a session goroutine outlives its test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
