// Mortgage amortisation (CPU-bound): a monthly schedule with prepayment (CPR) and default (CDR)
// rates, repeated over `scenarios` rate shocks. Returns totals, not the schedule, so the cost is
// compute, not output.
import { parse, num } from './lib/json'

function monthly(annualPct: f64): f64 {
  return 1.0 - Math.pow(1.0 - annualPct / 100.0, 1.0 / 12.0)
}

function round2(v: f64): f64 {
  return Math.round(v * 100.0) / 100.0
}

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  if (input == null) return '{"error":"input is not valid JSON"}'
  const principal = input.getNumber('principal', 0)
  const annualRate = input.getNumber('annualRate', 0)
  const years = <i32>input.getNumber('years', 30)
  const smm = monthly(input.getNumber('cpr', 0))
  const mdr = monthly(input.getNumber('cdr', 0))
  const scenarios = max<i32>(1, <i32>input.getNumber('scenarios', 1))
  if (principal <= 0 || years <= 0 || years > 100) return '{"error":"principal and years must be positive"}'

  const months = years * 12
  let firstPayment: f64 = 0
  let sumInterest: f64 = 0
  let sumPrincipal: f64 = 0
  let sumDefaults: f64 = 0
  for (let s = 0; s < scenarios; s++) {
    // Each scenario shifts the rate by a basis point.
    const r = (annualRate + <f64>s * 0.01) / 100.0 / 12.0
    let balance = principal
    for (let m = 0; m < months && balance > 0.005; m++) {
      const left = <f64>(months - m)
      const payment = r > 0 ? balance * r / (1.0 - Math.pow(1.0 + r, -left)) : balance / left
      if (s == 0 && m == 0) firstPayment = payment
      const interest = balance * r
      const scheduled = payment - interest
      const defaults = (balance - scheduled) * mdr
      const prepaid = (balance - scheduled - defaults) * smm
      sumInterest += interest
      sumPrincipal += scheduled + prepaid
      sumDefaults += defaults
      balance -= scheduled + prepaid + defaults
    }
  }
  const k = <f64>scenarios
  return '{"monthlyPayment":' + num(round2(firstPayment)) +
    ',"totalInterest":' + num(round2(sumInterest / k)) +
    ',"totalPrincipal":' + num(round2(sumPrincipal / k)) +
    ',"totalDefaults":' + num(round2(sumDefaults / k)) +
    ',"months":' + num(months) + ',"scenarios":' + num(scenarios) + '}'
}
