import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['__test__/**/*.test.ts'],
    // Native addons must not be loaded into worker threads that get torn down.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
})
