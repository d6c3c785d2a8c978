import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['__test__/**/*.test.ts'],
    // Native addons must not be loaded into worker threads that get torn down.
    pool: 'forks',
    // One temporary directory per run, removed at its end (see the file).
    globalSetup: ['__test__/temp-root.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
})
