/** Numbers typed into forms. */

/**
 * A whole number from a form field, or `undefined` when it is empty. Text that is not a number is
 * refused here: the API's fields are integers and cannot carry it to the service to judge.
 */
export function wholeNumber(raw: string): number | undefined | "invalid" {
  const text = raw.trim();
  if (text === "") return undefined;
  return /^-?\d{1,9}$/.test(text) ? Number(text) : "invalid";
}
